"""The conmon monitor's waits on a conmon that is not its child (a container adopted after
a restart): for it to go (the next container of an id must not take the records of the
last one's conmon), and for the exit it records (or the news that it never will)."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

from agent.runtime.errors import MonitorLost
from agent.runtime.monitor import ConmonMonitor
from agent.runtime.oci import OciRuntime

CONTAINER = "ja-0123"


def monitor_of(tmp_path: Path) -> ConmonMonitor:
    runtime = OciRuntime("true", tmp_path / "state")
    return ConmonMonitor("conmon", runtime, tmp_path / "exits", tmp_path / "attach")


def fake_conmon(
    monitor: ConmonMonitor, seconds: float, container_id: str, then: str = "exit 0"
) -> subprocess.Popen[bytes]:
    """A process that is not the monitor's child handle, whose command line names the
    container (as conmon's does), with its pid where the agent records it; it runs the
    shell command `then` after `seconds`."""
    process = subprocess.Popen(["sh", "-c", f"sleep {seconds}; {then}", container_id])
    # Read in the midst of its exec, the command line is empty for a moment.
    while container_id.encode() not in Path(f"/proc/{process.pid}/cmdline").read_bytes():
        time.sleep(0.001)
    monitor.persist_dir(CONTAINER).mkdir(parents=True)
    monitor.conmon_pid_file(CONTAINER).write_text(f"{process.pid}\n")
    return process


async def test_gone_waits_for_the_conmon_of_a_deleted_container(tmp_path: Path) -> None:
    monitor = monitor_of(tmp_path)
    process = fake_conmon(monitor, 0.3, CONTAINER)
    try:
        started = time.monotonic()
        assert monitor.gone_here(CONTAINER, timeout=10)
        assert time.monotonic() - started >= 0.2
    finally:
        process.kill()
        process.wait()


async def test_gone_says_when_the_conmon_stays(tmp_path: Path) -> None:
    monitor = monitor_of(tmp_path)
    process = fake_conmon(monitor, 30, CONTAINER)
    try:
        assert not monitor.gone_here(CONTAINER, timeout=0.1)
    finally:
        process.kill()
        process.wait()


async def test_gone_waits_for_no_process_that_took_the_pid_since(tmp_path: Path) -> None:
    monitor = monitor_of(tmp_path)
    process = fake_conmon(monitor, 30, "another-container")
    try:
        assert monitor.gone_here(CONTAINER, timeout=10)
        assert process.poll() is None
    finally:
        process.kill()
        process.wait()


async def test_gone_without_a_pid_file_has_nothing_to_wait_for(tmp_path: Path) -> None:
    assert monitor_of(tmp_path).gone_here(CONTAINER, timeout=10)


async def test_wait_on_an_adopted_conmon_returns_the_exit_it_recorded(tmp_path: Path) -> None:
    monitor = monitor_of(tmp_path)
    exit_file = monitor.exit_file(CONTAINER)
    process = fake_conmon(monitor, 0.2, CONTAINER, f"echo 3 > {exit_file}; exit 0")
    try:
        assert await asyncio.wait_for(monitor.wait(CONTAINER), 10) == 3
    finally:
        process.kill()
        process.wait()


async def test_wait_on_an_adopted_conmon_killed_before_recording_says_lost(
    tmp_path: Path,
) -> None:
    monitor = monitor_of(tmp_path)
    process = fake_conmon(monitor, 30, CONTAINER)
    try:
        waiting = asyncio.ensure_future(monitor.wait(CONTAINER))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        process.kill()
        with pytest.raises(MonitorLost, match=CONTAINER):
            await asyncio.wait_for(waiting, 10)
    finally:
        process.kill()
        process.wait()


async def test_wait_without_a_recorded_conmon_follows_the_exit_file(tmp_path: Path) -> None:
    """A container of an agent that did not record conmon's pid."""
    monitor = monitor_of(tmp_path)
    monitor.exit_file(CONTAINER).parent.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, monitor.exit_file(CONTAINER).write_text, "0")
    assert await asyncio.wait_for(monitor.wait(CONTAINER), 10) == 0


@pytest.mark.parametrize("fault", ["empty pid file", "no fd left"])
async def test_wait_never_takes_an_unknown_conmon_for_a_dead_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """A pid file cut short by a crash, or an error such as EMFILE: the conmon may be alive,
    so the wait goes on (by the exit file) instead of declaring the container lost."""
    monitor = monitor_of(tmp_path)
    process = fake_conmon(monitor, 30, CONTAINER)
    try:
        if fault == "empty pid file":
            monitor.conmon_pid_file(CONTAINER).write_text("")
        else:

            def no_fd(pid: int) -> int:
                raise OSError(errno.EMFILE, "Too many open files")

            monkeypatch.setattr(os, "pidfd_open", no_fd)
        waiting = asyncio.ensure_future(monitor.wait(CONTAINER))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        monitor.exit_file(CONTAINER).write_text("5")
        assert await asyncio.wait_for(waiting, 10) == 5
    finally:
        process.kill()
        process.wait()
