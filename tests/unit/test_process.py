"""Helper commands run off the event loop: their output, errors, timeouts and cancels."""

from __future__ import annotations

import asyncio
import contextvars
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.runtime.errors import CommandError
from agent.runtime.process import off_loop, pidfd_exited_here, run, run_here

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="")


async def test_run_returns_stdout_of_any_size() -> None:
    # Past a pipe's buffer: both pipes must be read while the command runs.
    script = "head -c 300000 /dev/zero | tr '\\0' x; head -c 300000 /dev/zero >&2"
    output = await run(["sh", "-c", script])
    assert output == "x" * 300000


async def test_run_raises_with_the_exit_code_and_stderr() -> None:
    with pytest.raises(CommandError) as raised:
        await run(["sh", "-c", "echo out; echo broken >&2; exit 3"])
    assert raised.value.returncode == 3
    assert "broken" in raised.value.stderr


async def test_run_kills_a_command_past_its_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(CommandError, match="timed out"):
        await run(["sleep", "30"], timeout=0.2)
    assert time.monotonic() - started < 10


async def test_a_cancelled_run_kills_its_command(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    task = asyncio.ensure_future(run(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 30"]))
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


async def test_a_missing_program_is_a_command_error() -> None:
    with pytest.raises(CommandError, match="cannot run"):
        await run(["/nonexistent/program"])


async def test_off_loop_runs_in_a_worker_thread_with_the_callers_context() -> None:
    marker.set("caller")

    def work(value: int) -> tuple[int, str, bool]:
        import threading

        return value * 2, marker.get(), threading.current_thread() is threading.main_thread()

    assert await off_loop(work, 21) == (42, "caller", False)


async def test_a_cancelled_off_loop_caller_waits_for_the_work() -> None:
    finished: list[bool] = []

    def work() -> None:
        time.sleep(0.3)
        finished.append(True)

    task = asyncio.ensure_future(off_loop(work))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == [True]


def test_run_here_blocks_the_calling_thread_for_the_output() -> None:
    assert run_here(["sh", "-c", "echo out; echo err >&2"]) == "out\n"
    with pytest.raises(CommandError, match="timed out"):
        run_here(["sleep", "30"], timeout=0.1)


def test_pidfd_exited_here_says_whether_the_process_ended_in_time() -> None:
    process = subprocess.Popen(["sleep", "30"])
    pidfd = os.pidfd_open(process.pid)
    try:
        assert not pidfd_exited_here(pidfd, 0.05)
        process.kill()
        assert pidfd_exited_here(pidfd, 10)
    finally:
        os.close(pidfd)
        process.wait()


async def test_a_timed_out_command_is_not_waited_for_past_its_own_end(tmp_path: Path) -> None:
    # The command's child keeps its pipes open after the command is killed.
    pid_file = tmp_path / "child"
    started = time.monotonic()
    try:
        with pytest.raises(CommandError, match="timed out"):
            await run(["sh", "-c", f"sleep 30 & echo $! > {pid_file}; exec sleep 30"], timeout=0.2)
        assert time.monotonic() - started < 10
    finally:
        # Written by then on any machine the test runs on; if not, there is nothing to kill.
        if pid_file.exists() and pid_file.read_text().strip():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
