"""Reading CRI log files: filters, tail, the size cap and a rotation while following."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.domain import LogLine, LogStream
from agent.executor.logs import LogQuery, read_log


def cri(stream: str, text: str, second: int = 0) -> bytes:
    return f"2026-11-26T10:00:{second:02d}.000000001Z {stream} F {text}\n".encode()


async def read_all(
    path: Path, query: LogQuery, ended: asyncio.Event | None = None
) -> list[LogLine]:
    done = ended or asyncio.Event()
    if ended is None:
        done.set()
    return [line async for line in read_log(path, query, done)]


async def test_filters_and_tail(tmp_path: Path) -> None:
    path = tmp_path / "1.log"
    path.write_bytes(b"".join(cri("stdout" if i % 2 else "stderr", f"l{i}", i) for i in range(6)))
    assert [x.message for x in await read_all(path, LogQuery())] == [f"l{i}" for i in range(6)]
    stderr = await read_all(path, LogQuery(stream=LogStream.STDERR))
    assert [x.message for x in stderr] == ["l0", "l2", "l4"]
    assert [x.message for x in await read_all(path, LogQuery(tail_lines=2))] == ["l4", "l5"]
    since = await read_all(path, LogQuery(since=stderr[1].time))
    assert [x.message for x in since] == ["l2", "l3", "l4", "l5"]


async def test_the_size_cap_keeps_the_newest_whole_lines_and_marks_the_cut(
    tmp_path: Path,
) -> None:
    path = tmp_path / "1.log"
    lines = [cri("stdout", f"line {i:03d}") for i in range(100)]
    path.write_bytes(b"".join(lines))
    shown = await read_all(path, LogQuery(max_bytes=10 * len(lines[0]) + 5))
    assert [x.message for x in shown] == [f"line {i:03d}" for i in range(90, 100)]
    assert [x.truncated for x in shown] == [True] + [False] * 9
    assert not any(x.truncated for x in await read_all(path, LogQuery(max_bytes=1 << 20)))


async def test_a_rotation_while_following_restarts_from_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "1.log"
    path.write_bytes(cri("stdout", "before") * 3)
    ended = asyncio.Event()
    seen: list[LogLine] = []

    async def follow() -> None:
        async for line in read_log(path, LogQuery(follow=True), ended):
            seen.append(line)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    path.write_bytes(cri("stdout", "after"))
    await asyncio.sleep(0.1)
    ended.set()
    await asyncio.wait_for(task, 5)
    assert [x.message for x in seen] == ["before"] * 3 + ["after"]
    assert seen[-1].truncated
