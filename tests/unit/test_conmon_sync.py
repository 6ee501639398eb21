"""conmon's start and its sync pipe, read in the calling thread: the container's pid or the
runtime's error, the pid file the agent writes for the next agent, and no fd left open; a
create that never reports is killed and removed, at its bound or at its run's cancel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

from agent.runtime import monitor as monitor_module
from agent.runtime.errors import ContainerCreateError
from agent.runtime.monitor import ConmonMonitor, MonitorPaths
from agent.runtime.oci import OciRuntime
from agent.runtime.process import off_loop_cancelling

CONTAINER = "ja-0123"
# How long the processes of a wedged create sleep: a number no other process's command
# line holds.
WEDGED = "987654"


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


def wedged_monitor(tmp_path: Path) -> tuple[ConmonMonitor, MonitorPaths, Path]:
    """A monitor whose "conmon" starts a "runtime create" that starts a "container init",
    each blocked for good, and never reports on its sync pipe: as a runtime whose init
    reads an endless /etc/passwd. Its runtime records each call in the returned file."""
    calls = tmp_path / "runtime-calls"
    runtime = tmp_path / "runtime"
    runtime.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    runtime.chmod(0o755)
    monitor, paths = monitor_with(tmp_path, "")
    # Every process of the create (the shells and their sleeps) has WEDGED in its command
    # line, for the test to find.
    (tmp_path / "conmon").write_text(
        "#!/bin/sh\n"
        f"sh -c 'sh -c \"sleep {WEDGED}; :\" init & sleep {WEDGED}; :' create &\n"
        f"sleep {WEDGED}; :\n"
    )
    monitor = ConmonMonitor(
        str(tmp_path / "conmon"),
        OciRuntime(str(runtime), tmp_path / "state"),
        tmp_path / "exits",
        tmp_path / "s",
    )
    return monitor, paths, calls


def processes_naming(text: str) -> list[int]:
    """The live processes whose command line holds `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if text.encode() in cmdline and state != "Z":
            found.append(int(entry))
    return found


def wedge_started() -> bool:
    """True once the wedged create's processes all run: conmon's sleep, the create's shell
    and sleep, the init's."""
    return len(processes_naming(WEDGED)) >= 5


def test_a_create_that_never_reports_is_killed_and_removed_at_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack's effect: a runtime create that never reports the container's init ready
    (an init reading an endless /etc/passwd). The wait on conmon's sync pipe had no
    bound: the run held its slot, and the agent's worker thread, for good. Now the
    create is given up at CREATE_SECONDS: conmon, the runtime and the init are killed,
    the container is deleted, and the run fails at create."""
    monkeypatch.setattr(monitor_module, "CREATE_SECONDS", 0.5)
    monitor, paths, calls = wedged_monitor(tmp_path)
    before = open_fds()
    started = time.monotonic()
    with pytest.raises(
        ContainerCreateError, match=r"did not report the container created within 0.5s"
    ):
        monitor.create_here(CONTAINER, paths)
    assert time.monotonic() - started < 5
    assert processes_naming(WEDGED) == []
    assert f"delete --force {CONTAINER}" in calls.read_text()
    assert leaked(before, tmp_path) == []


def test_a_run_cancelled_during_its_create_kills_it_at_once(tmp_path: Path) -> None:
    """A cancel, a deadline or the agent's stop during the create used to wait for a create
    that never ends. Now the create is killed and removed within a poll."""
    monitor, paths, calls = wedged_monitor(tmp_path)
    cancelled = threading.Event()

    def cancel_once_wedged() -> None:
        deadline = time.monotonic() + 10
        while not wedge_started() and time.monotonic() < deadline:
            time.sleep(0.01)
        cancelled.set()

    threading.Thread(target=cancel_once_wedged, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(ContainerCreateError, match="cancelled while the runtime created"):
        monitor.create_here(CONTAINER, paths, cancelled=cancelled)
    assert time.monotonic() - started < 5
    assert processes_naming(WEDGED) == []
    assert f"delete --force {CONTAINER}" in calls.read_text()
    # A run cancelled before its create starts no conmon.
    with pytest.raises(ContainerCreateError, match="cancelled before"):
        monitor.create_here(CONTAINER, paths, cancelled=cancelled)
    assert processes_naming(WEDGED) == []


async def test_the_caller_of_a_wedged_create_is_cancelled_promptly(tmp_path: Path) -> None:
    """As the manager runs a create: off the loop, the cancel hook setting the create's
    event. The agent's stop and a run's deadline cancel the task; it used to wait for the
    worker thread for good, and the agent never stopped."""
    monitor, paths, _ = wedged_monitor(tmp_path)
    cancelled = threading.Event()
    task = asyncio.create_task(
        off_loop_cancelling(
            lambda: monitor.create_here(CONTAINER, paths, cancelled=cancelled), cancelled.set
        )
    )
    deadline = time.monotonic() + 10
    while not wedge_started() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 2
    assert processes_naming(WEDGED) == []
