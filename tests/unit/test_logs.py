"""Reading CRI log files: filters, tail, the size cap and a rotation while following; and
reading them as chunks of whole records (DownloadLogs)."""

from __future__ import annotations

import asyncio
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from agent.domain import LogLine, LogStream
from agent.executor import logs
from agent.executor.logs import (
    BATCH_CHARS,
    DOWNLOAD_CHUNK_BYTES,
    READ_BYTES,
    SCAN_RECORDS,
    CapStart,
    LogChunk,
    LogQuery,
    read_log,
    read_log_batches,
    read_log_chunks,
)
from agent.runtime.crilog import parse_line, parse_records, stamp_nanos


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


async def test_the_size_cap_keeps_the_newest_output_bytes_and_marks_the_cut(
    tmp_path: Path,
) -> None:
    path = tmp_path / "1.log"
    path.write_bytes(b"".join(cri("stdout", f"line {i:03d}") for i in range(100)))
    # Each line is 9 bytes of output ("line 042" and its newline): the records' timestamps
    # and tags do not count. 95 bytes keep ten lines and the last 5 bytes of the one before.
    shown = await read_all(path, LogQuery(max_bytes=95))
    assert [x.message for x in shown] == [" 089"] + [f"line {i:03d}" for i in range(90, 100)]
    assert [x.truncated for x in shown] == [True] + [False] * 10
    exact = await read_all(path, LogQuery(max_bytes=90))
    assert [x.message for x in exact] == [f"line {i:03d}" for i in range(90, 100)]
    assert exact[0].truncated
    assert not any(x.truncated for x in await read_all(path, LogQuery(max_bytes=900)))


def output_of(lines: list[LogLine]) -> bytes:
    """The bytes the container wrote, as the lines read give them back."""
    return b"".join(line.message.encode() + (b"" if line.partial else b"\n") for line in lines)


async def test_the_cap_keeps_exactly_the_newest_output_whatever_the_records(
    tmp_path: Path,
) -> None:
    generator = random.Random(7)
    records, output = [], b""
    for index in range(3000):
        text = "".join(generator.choice("abé") for _ in range(generator.randrange(0, 40)))
        partial = generator.random() < 0.2
        tag = "P" if partial else "F"
        records.append(f"2026-11-26T10:00:00.{index:09d}Z stdout {tag} {text}\n".encode())
        output += text.encode() + (b"" if partial else b"\n")
    path = tmp_path / "1.log"
    path.write_bytes(b"".join(records))
    for cap in (1, 2, 17, 1000, 4095, len(output) - 1, len(output), len(output) + 1):
        shown = await read_all(path, LogQuery(max_bytes=cap))
        kept = output_of(shown)
        # A character cut in two is shown replaced; its bytes still count where they were.
        if "\ufffd" not in shown[0].message:
            assert kept == output[-cap:], cap
        assert output.endswith(output_of(shown[1:]))
        assert shown[0].truncated is (cap < len(output))


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


async def chunks_of(path: Path, start: int = 0, max_bytes: int | None = None) -> list[LogChunk]:
    ended = asyncio.Event()
    ended.set()
    return [chunk async for chunk in read_log_chunks(path, start, False, ended, max_bytes)]


async def test_chunks_are_whole_records_with_contiguous_offsets(tmp_path: Path) -> None:
    path = tmp_path / "1.log"
    records = [cri("stdout" if i % 3 else "stderr", "x" * (i % 200), i % 60) for i in range(30000)]
    path.write_bytes(b"".join(records))
    chunks = await chunks_of(path)
    assert len(chunks) > 2 and all(len(c.data) <= DOWNLOAD_CHUNK_BYTES for c in chunks)
    assert b"".join(c.data for c in chunks) == path.read_bytes()
    assert all(c.data.endswith(b"\n") and not c.truncated for c in chunks)
    assert [c.offset for c in chunks] == [
        sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))
    ]
    # Resuming from a chunk boundary gives the rest; from inside a record, the next record.
    resumed = await chunks_of(path, chunks[1].offset)
    assert b"".join(c.data for c in resumed) == b"".join(c.data for c in chunks[1:])
    inside = await chunks_of(path, len(records[0]) + 3)
    assert inside[0].offset == len(records[0]) + len(records[1])
    assert await chunks_of(path, path.stat().st_size) == []


async def test_chunks_under_the_size_cap_start_at_a_record_and_are_marked(tmp_path: Path) -> None:
    path = tmp_path / "1.log"
    records = [cri("stdout", f"line {i:03d}") for i in range(100)]
    path.write_bytes(b"".join(records))
    # 95 bytes of output: ten whole lines and part of one, which a download leaves out.
    (chunk,) = await chunks_of(path, max_bytes=95)
    assert chunk.truncated and chunk.data == b"".join(records[90:])
    assert chunk.offset == 90 * len(records[0])


async def test_a_record_longer_than_a_chunk_goes_in_pieces(tmp_path: Path) -> None:
    path = tmp_path / "1.log"
    path.write_bytes(cri("stdout", "y" * (DOWNLOAD_CHUNK_BYTES + 10)) + cri("stdout", "end"))
    chunks = await chunks_of(path)
    assert b"".join(c.data for c in chunks) == path.read_bytes()


async def test_following_chunks_sees_new_records_and_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "1.log"
    path.write_bytes(cri("stdout", "first"))
    ended = asyncio.Event()
    seen: list[LogChunk] = []

    async def follow() -> None:
        async for chunk in read_log_chunks(path, 0, True, ended):
            seen.append(chunk)

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    with path.open("ab") as log:
        log.write(cri("stdout", "second")[:20])  # a record being written is held back
        log.flush()
        await asyncio.sleep(0.1)
        log.write(cri("stdout", "second")[20:])
    await asyncio.sleep(0.1)
    path.write_bytes(cri("stdout", "rotated"))
    await asyncio.sleep(0.1)
    ended.set()
    await asyncio.wait_for(task, 5)
    assert [c.data for c in seen] == [
        cri("stdout", "first"),
        cri("stdout", "second"),
        cri("stdout", "rotated"),
    ]
    assert [c.truncated for c in seen] == [False, False, True] and seen[2].offset == 0


async def test_a_log_larger_than_one_read_is_read_whole_and_its_tail_is_the_files(
    tmp_path: Path,
) -> None:
    path = tmp_path / "1.log"
    count = 3 * READ_BYTES // len(cri("stdout", "line 000000"))
    path.write_bytes(b"".join(cri("stdout", f"line {i:06d}") for i in range(count)))
    every = await read_all(path, LogQuery())
    assert [x.message for x in every] == [f"line {i:06d}" for i in range(count)]
    tail = await read_all(path, LogQuery(tail_lines=3))
    assert [x.message for x in tail] == [f"line {i:06d}" for i in range(count - 3, count)]


async def test_batches_carry_the_same_lines_as_the_line_reader_in_pieces_of_64k(
    tmp_path: Path,
) -> None:
    path = tmp_path / "1.log"
    records = [
        cri("stderr" if i % 7 == 0 else "stdout", f"line {i} " + "z" * (i % 90), i % 60)
        for i in range(20000)
    ]
    path.write_bytes(b"".join(records) + b"2026-11-26T10:00:00.1Z stdout P unfinished")
    ended = asyncio.Event()
    ended.set()
    queries = [LogQuery(), LogQuery(tail_lines=1234), LogQuery(stream=LogStream.STDERR)]
    queries += [LogQuery(max_bytes=300_000), LogQuery(tail_lines=5, max_bytes=1000)]
    for query in queries:
        batches = [batch async for batch in read_log_batches(path, query, ended)]
        sizes = [sum(len(message) + 1 for message in batch.messages) for batch in batches]
        assert max(sizes) <= BATCH_CHARS + 200
        assert [batch.truncated for batch in batches[1:]] == [False] * (len(batches) - 1)
        flat = [line for batch in batches for line in batch.lines()]
        assert flat == await read_all(path, query)
        assert flat and flat[-1].message.startswith("line 19999")


def test_records_parse_as_parse_line_does() -> None:
    data = (
        cri("stdout", "plain")
        + "2026-11-26T10:00:00.123456789+00:00 stderr P caf\u00e9 \u2603\n".encode()
        + b"2026-11-26T10:00:00.5+01:00 stdout F offset zone\n"
        + b"garbage without fields\n"
        + b"2026-11-26T10:00:00.1Z nowhere F bad stream\n"
        + b"not-a-time stdout F bad time\n"
        + b"2026-11-26T10:00:01.000000001Z stdout F \xff\xfe invalid utf-8\n"
    )
    batch = parse_records(data)
    expected = [line for raw in data.split(b"\n") if (line := parse_line(raw)) is not None]
    assert [(x.stream, x.message, x.partial) for x in batch.lines()] == [
        (x.stream, x.message, x.partial) for x in expected
    ]
    assert [x.time for x in batch.lines()] == [x.time for x in expected]
    assert batch.times[1] == stamp_nanos("2026-11-26T10:00:00.123456789Z")
    assert batch.times[1] % 1_000_000_000 == 123_456_789


async def test_a_tail_is_the_last_lines_that_the_query_shows(tmp_path: Path) -> None:
    generator = random.Random(11)
    records = []
    for index in range(4000):
        text = "".join(generator.choice("ab é") for _ in range(generator.randrange(0, 30)))
        name = generator.choice(("stdout", "stderr"))
        tag = "P" if generator.random() < 0.2 else "F"
        records.append(f"2026-11-26T10:00:{index // 100:02d}.{index:09d}Z {name} {tag} {text}\n")
        if generator.random() < 0.02:
            records.append(generator.choice(("garbage\n", "not-a-time stdout F x\n")))
    path = tmp_path / "1.log"
    path.write_bytes("".join(records).encode() + b"2026-11-26T10:00:59.1Z stdout F unfinished")
    middle = (await read_all(path, LogQuery()))[2000].time
    for stream in (None, LogStream.STDERR):
        for since in (None, middle):
            for cap in (None, 5000, 40_000):
                every = await read_all(path, LogQuery(stream=stream, since=since, max_bytes=cap))
                for lines in (1, 7, 500, len(every) - 1, len(every), len(every) + 1, 2**31 - 1):
                    query = LogQuery(tail_lines=lines, stream=stream, since=since, max_bytes=cap)
                    tail = await read_all(path, query)
                    shown = [(x.message, x.stream, x.time, x.partial) for x in tail]
                    assert shown == [
                        (x.message, x.stream, x.time, x.partial) for x in every[-lines:]
                    ], (stream, since, cap, lines)
                    assert [x.truncated for x in tail[1:]] == [False] * (len(tail) - 1)
                    assert not tail or tail[0].truncated is bool(every and every[0].truncated)


def short_lines(path: Path, size: int) -> int:
    """A log of `size` bytes or so of records of two-byte lines; returns their count."""
    record = cri("stdout", "ab")
    count = size // len(record)
    path.write_bytes(record * count)
    return count


async def test_a_tail_of_any_length_holds_one_read_of_the_log_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "1.log"
    count = short_lines(path, 8 << 20)
    ended = asyncio.Event()
    ended.set()
    tracemalloc.start()
    try:
        read = 0
        async for batch in read_log_batches(path, LogQuery(tail_lines=2**31 - 1), ended):
            read += len(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert read == count
    # A read's lines of two bytes take about eleven times its bytes: the whole log's, 29 MiB.
    assert peak < 16 * READ_BYTES, peak


async def test_searching_and_reading_a_long_log_gives_other_calls_turns(tmp_path: Path) -> None:
    path = tmp_path / "1.log"
    count = short_lines(path, 8 << 20)
    reads = (8 << 20) // READ_BYTES
    ended = asyncio.Event()
    ended.set()
    turns = 0

    async def other_call() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_call())
    await asyncio.sleep(0)
    try:
        # Shown nothing (no stderr), the reader never waits on a send of its own.
        for query in (
            LogQuery(stream=LogStream.STDERR),
            LogQuery(stream=LogStream.STDERR, tail_lines=10),
            LogQuery(stream=LogStream.STDERR, max_bytes=READ_BYTES),
        ):
            before = turns
            assert [batch async for batch in read_log_batches(path, query, ended)] == []
            # A turn after each full read (the last one is short).
            assert turns - before >= reads - 1, query
        before = turns
        # A cap of all the output but a byte: its start is found past every record but one.
        cap = 3 * count - 1
        chunks = [chunk async for chunk in read_log_chunks(path, 0, False, ended, cap)]
        assert chunks[0].truncated
        # A turn every SCAN_RECORDS records searched, and after each chunk sent.
        assert turns - before >= count // SCAN_RECORDS
    finally:
        other.cancel()


async def test_readers_of_one_log_share_its_search_for_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "1.log"
    count = short_lines(path, 1 << 20)
    searches = []
    search = logs._search_cap_start

    async def counted(*args: Any) -> CapStart:
        searches.append(args)
        return await search(*args)

    monkeypatch.setattr(logs, "_search_cap_start", counted)
    ended = asyncio.Event()
    ended.set()
    query = LogQuery(max_bytes=3 * count - 3)

    async def read() -> int:
        return sum([len(batch) async for batch in read_log_batches(path, query, ended)])

    # One reader goes away during the search: the others still get its result.
    early = asyncio.create_task(read())
    await asyncio.sleep(0)
    readers = [asyncio.create_task(read()) for _ in range(8)]
    await asyncio.sleep(0)
    early.cancel()
    assert await asyncio.gather(*readers) == [count - 1] * 8
    assert len(searches) == 1
    assert await read() == count - 1
    assert len(searches) == 1
    # The file changed: its cap is searched for again.
    with path.open("ab") as file:
        file.write(cri("stdout", "ab"))
    assert await read() == count - 1
    assert len(searches) == 2


async def test_a_search_for_the_cap_that_no_reader_waits_for_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "1.log"
    count = short_lines(path, 1 << 20)
    ended, started = asyncio.Event(), asyncio.Event()
    ended.set()
    searches: list[asyncio.Task[Any]] = []
    search = logs._search_cap_start

    async def noted(*args: Any) -> CapStart:
        task = asyncio.current_task()
        assert task is not None
        searches.append(task)
        started.set()
        return await search(*args)

    monkeypatch.setattr(logs, "_search_cap_start", noted)
    query = LogQuery(max_bytes=3 * count - 3)
    readers = [
        asyncio.create_task(anext(read_log_batches(path, query, ended), None)) for _ in range(3)
    ]
    await started.wait()
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    await asyncio.sleep(0)
    assert len(searches) == 1 and searches[0].cancelled()
    inode = path.stat().st_ino
    assert not [key for key in logs._cap_searches if key[1] == inode]
