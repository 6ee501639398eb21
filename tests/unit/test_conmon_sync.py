"""conmon's start and its sync pipe, read in the calling thread: the container's pid or the
runtime's error, the pid file the agent writes for the next agent, and no fd left open."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from agent.runtime.errors import ContainerCreateError
from agent.runtime.monitor import ConmonMonitor, MonitorPaths
from agent.runtime.oci import OciRuntime

CONTAINER = "ja-0123"


def monitor_with(tmp_path: Path, report: str) -> tuple[ConmonMonitor, MonitorPaths]:
    """A monitor whose "conmon" writes `report` on its sync pipe, as conmon does once the
    runtime's create returned, and exits."""
    conmon = tmp_path / "conmon"
    # dash redirects to one-digit fds only: the pipe is reopened through /proc.
    conmon.write_text(f"#!/bin/sh\nprintf '%s\\n' '{report}' > /proc/self/fd/$_OCI_SYNCPIPE\n")
    conmon.chmod(0o755)
    monitor = ConmonMonitor(
        str(conmon), OciRuntime("true", tmp_path / "state"), tmp_path / "exits", tmp_path / "s"
    )
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    return monitor, MonitorPaths(bundle, tmp_path / "log", bundle / "runtime.log")


def open_fds() -> dict[str, str]:
    """Each open descriptor of the process and what it points at."""
    found: dict[str, str] = {}
    for descriptor in os.listdir("/proc/self/fd"):
        # The listing's own descriptor, or one another thread closed meanwhile, is gone.
        with contextlib.suppress(FileNotFoundError):
            found[descriptor] = os.readlink(f"/proc/self/fd/{descriptor}")
    return found


def leaked(before: dict[str, str], tmp_path: Path) -> list[str]:
    """What the monitor could have left open since `before`: pipes, pidfds and files of the
    test's. Sockets and event fds that other threads (gRPC's, from earlier tests) open
    meanwhile are not its."""
    return [
        target
        for descriptor, target in open_fds().items()
        if before.get(descriptor) != target
        and (target.startswith(("pipe:", "anon_inode:[pidfd]")) or str(tmp_path) in target)
    ]


def test_the_pid_conmon_reports_is_returned_and_its_own_recorded(tmp_path: Path) -> None:
    monitor, paths = monitor_with(tmp_path, '{"data": 4242}')
    before = open_fds()
    assert monitor.create_here(CONTAINER, paths) == 4242
    assert monitor.gone_here(CONTAINER, timeout=10)
    assert int(monitor.conmon_pid_file(CONTAINER).read_text()) > 0
    assert oct(monitor.conmon_pid_file(CONTAINER).stat().st_mode & 0o777) == "0o600"
    monitor.forget(CONTAINER)
    assert leaked(before, tmp_path) == []


def test_the_runtimes_error_on_the_sync_pipe_is_a_create_error(tmp_path: Path) -> None:
    monitor, paths = monitor_with(tmp_path, '{"data": -1, "message": "no such image"}')
    before = open_fds()
    with pytest.raises(ContainerCreateError, match="no such image"):
        monitor.create_here(CONTAINER, paths)
    assert leaked(before, tmp_path) == []


def test_a_conmon_that_exits_without_a_word_is_a_create_error(tmp_path: Path) -> None:
    monitor, paths = monitor_with(tmp_path, "")
    (tmp_path / "conmon").write_text("#!/bin/sh\necho 'cannot make the log' >&2\nexit 1\n")
    with pytest.raises(ContainerCreateError, match="cannot make the log"):
        monitor.create_here(CONTAINER, paths)
