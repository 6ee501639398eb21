"""conmon holds each container: its stdio, its log file and its exit code.

As in podman and CRI-O, conmon runs `<runtime> create`, reports the container's pid on
a sync pipe, relays stdout and stderr into a CRI-format log file, and writes the exit
code to <exit-dir>/<container-id>. The container and those files outlive the agent.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import select
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.hostfs import CHILD_UMASK, make_dir, read_small_file
from agent.runtime.errors import CommandError, ContainerCreateError, MonitorLost
from agent.runtime.oci import OciRuntime
from agent.runtime.process import (
    exited,
    exited_here,
    kill_tree,
    pidfd_exited,
    pidfd_exited_here,
)

log = logging.getLogger(__name__)

EXIT_POLL_SECONDS = 0.05
# How long a conmon whose container is deleted may take to write its records and exit.
CONMON_EXIT_SECONDS = 5.0
# How long the runtime's create may take to report the container's init ready (conmon
# reports it on the sync pipe). A create takes 30-50 ms here, image users and idmapped
# mounts included, and a few seconds on a host loaded as the soak's was; 60 s is the
# bound of the runtime's start and delete as well. A create past it is one that will not
# end (an init blocked on what the container gave it): it is killed and removed.
CREATE_SECONDS = 60.0
# How often a create under way looks whether its run was cancelled.
CREATE_POLL_SECONDS = 0.1


class Conmon(enum.Enum):
    """What is known of an adopted container's conmon, besides a pidfd of it."""

    GONE = "gone"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class MonitorPaths:
    """Where conmon keeps the files of one container."""

    bundle: Path
    log_file: Path
    runtime_log: Path


class ConmonMonitor:
    """Starts conmon for containers and reads back what it recorded."""

    def __init__(
        self, conmon: str, runtime: OciRuntime, exits_dir: Path, sockets_dir: Path
    ) -> None:
        # Found on PATH once: a bare name would be looked up in every PATH entry by each
        # spawn's child, a failed execve per entry.
        self._conmon = shutil.which(conmon) or conmon
        self._runtime = runtime
        self._exits_dir = exits_dir
        self._sockets_dir = sockets_dir
        # conmon must outlive the agent: it is a plain Popen child, never an asyncio
        # transport (closing one kills its process), and is waited for through a pidfd.
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        make_dir(exits_dir)
        make_dir(sockets_dir)

    def create_here(
        self,
        container_id: str,
        paths: MonitorPaths,
        log_size_max: int | None = None,
        cancelled: threading.Event | None = None,
    ) -> int:
        """Creates the container under a new conmon; returns the container's pid. Starts
        conmon and reads the pid, or the runtime's error, from its sync pipe: blocking,
        call it from a worker thread. A create that does not report within
        CREATE_SECONDS, or whose run is `cancelled` meanwhile, is killed (conmon and the
        runtime's processes under it) and deleted; it raises ContainerCreateError."""
        if cancelled is not None and cancelled.is_set():
            raise ContainerCreateError("cancelled before the container was created")
        self.forget(container_id)
        make_dir(self.persist_dir(container_id))
        argv = [
            self._conmon,
            "--api-version",
            "1",
            "--sync",
            "--cid",
            container_id,
            "--cuuid",
            container_id,
            "--name",
            container_id,
            "--runtime",
            self._runtime.executable,
            "--bundle",
            str(paths.bundle),
            "--container-pidfile",
            str(paths.bundle / "pidfile"),
            "--exit-dir",
            str(self._exits_dir),
            "--persist-dir",
            str(self.persist_dir(container_id)),
            "--socket-dir-path",
            str(self._sockets_dir),
            "--log-path",
            f"k8s-file:{paths.log_file}",
            "--log-level",
            "error",
        ]
        if log_size_max is not None:
            argv += ["--log-size-max", str(log_size_max)]
        for arg in self._runtime.global_args(paths.runtime_log):
            argv += ["--runtime-arg", arg]
        conmon_log = paths.bundle / "conmon.log"
        read_end, write_end = os.pipe()
        with open(read_end, "rb", buffering=0) as sync_pipe:
            try:
                process = _spawn_conmon(
                    argv, conmon_log, write_end, self.conmon_pid_file(container_id)
                )
            except OSError as error:
                raise ContainerCreateError(f"cannot start conmon: {error}") from None
            finally:
                os.close(write_end)
            self._processes[container_id] = process
            report = _read_line(sync_pipe, CREATE_SECONDS, cancelled)
        if report is None:
            self._abandon_create(container_id, process)
            if cancelled is not None and cancelled.is_set():
                raise ContainerCreateError("cancelled while the runtime created the container")
            raise ContainerCreateError(
                f"the runtime did not report the container created within "
                f"{CREATE_SECONDS:g}s: its processes were killed and the container removed"
            )
        pid, detail = _parse_sync(report)
        if pid <= 0:
            process.wait()
            self._processes.pop(container_id, None)
            raise ContainerCreateError(_runtime_error(detail, paths.runtime_log, conmon_log))
        return pid

    def _abandon_create(self, container_id: str, process: subprocess.Popen[bytes]) -> None:
        """Ends a create that did not report: kills its conmon and every process under it
        (the runtime's create, the container's init), then deletes what the runtime
        recorded of the container."""
        kill_tree(process.pid)
        process.wait()
        self._processes.pop(container_id, None)
        try:
            self._runtime.delete_here(container_id)
        except CommandError as error:
            log.warning(
                "container %s: its abandoned create was not deleted: %s", container_id, error
            )

    def persist_dir(self, container_id: str) -> Path:
        """Where conmon keeps what outlives the container besides the exit file (oom)."""
        return self._exits_dir / f"{container_id}.d"

    def conmon_pid_file(self, container_id: str) -> Path:
        """Where conmon writes its own pid (kept with the exit records, across restarts)."""
        return self.persist_dir(container_id) / "conmon.pid"

    def gone_here(self, container_id: str, timeout: float = CONMON_EXIT_SECONDS) -> bool:
        """Waits, up to `timeout`, until the container's conmon has exited (call it once
        the container is deleted: conmon then has nothing left to hold); False if it is
        still there. A record it wrote late would be taken for that of the next container
        of the same id (a run started afresh after a restart). Blocking: call it from a
        worker thread."""
        process = self._processes.get(container_id)
        if process is not None:
            return exited_here(process, timeout)
        found = self._adopted_conmon(container_id)
        if not isinstance(found, int):
            return True
        try:
            return pidfd_exited_here(found, timeout)
        finally:
            os.close(found)

    def _adopted_conmon(self, container_id: str) -> int | Conmon:
        """A pidfd of the container's conmon when it is not the agent's child (a container
        adopted after a restart); GONE when that conmon has exited; UNKNOWN when that
        cannot be told (no pid recorded, as by an older agent, or an error such as no fd
        left): never taken for an exit, since a live container would then be killed."""
        try:
            pid = int(self.conmon_pid_file(container_id).read_text().strip())
        except (OSError, ValueError):
            return Conmon.UNKNOWN
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return Conmon.GONE
        except OSError:
            return Conmon.UNKNOWN
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        # Opened before its command line was read: a pid given to another process since
        # (or a zombie, whose command line is empty) is not taken for the conmon.
        if container_id.encode() not in cmdline:
            os.close(pidfd)
            return Conmon.GONE
        return pidfd

    async def _adopted_exit(self, container_id: str) -> None:
        """Returns once an adopted container's conmon has exited (at once when it has);
        when that cannot be told, once its exit file is written."""
        found = self._adopted_conmon(container_id)
        if isinstance(found, int):
            await _exited_within(found, None)
        elif found is Conmon.UNKNOWN:
            while self.exit_code(container_id) is None:
                await asyncio.sleep(EXIT_POLL_SECONDS)

    def exit_file(self, container_id: str) -> Path:
        """The file conmon writes the container's exit code to."""
        return self._exits_dir / container_id

    def exit_code(self, container_id: str) -> int | None:
        """The recorded exit code, or None while the container runs."""
        try:
            text = read_small_file(self.exit_file(container_id)).strip()
        except FileNotFoundError:
            return None
        return int(text) if text else None

    async def wait(self, container_id: str) -> int:
        """Waits until the container's conmon has exited; returns the exit code it
        recorded. Raises MonitorLost when it exited without recording one (it was killed):
        nobody is left to record the container's end."""
        process = self._processes.get(container_id)
        if process is not None:
            await exited(process)
        else:
            await self._adopted_exit(container_id)
        code = self.exit_code(container_id)
        if code is None:
            raise MonitorLost(
                f"the container's monitor (conmon) exited without recording its exit: "
                f"{container_id} is lost"
            )
        return code

    def release(self, container_id: str) -> None:
        """Drops the monitor's handle on a container's conmon."""
        self._processes.pop(container_id, None)

    def attach_link(self, container_id: str) -> Path:
        """The link conmon makes to the container's bundle (its attach socket's short
        path); conmon never removes it."""
        return self._sockets_dir / container_id

    def forget(self, container_id: str) -> None:
        """Drops what the monitor holds for a container: its process, exit and oom files
        and the link to its attach socket."""
        self.release(container_id)
        self.exit_file(container_id).unlink(missing_ok=True)
        shutil.rmtree(self.persist_dir(container_id), ignore_errors=True)
        self.attach_link(container_id).unlink(missing_ok=True)

    def oom_killed(self, container_id: str) -> bool:
        """True when conmon saw the container's memory cgroup kill a process."""
        return (self.persist_dir(container_id) / "oom").exists()


async def _exited_within(pidfd: int, timeout: float | None) -> bool:
    """pidfd_exited, closing the pidfd after."""
    try:
        return await pidfd_exited(pidfd, timeout)
    finally:
        os.close(pidfd)


def _read_line(
    pipe: BinaryIO, timeout: float, cancelled: threading.Event | None = None
) -> bytes | None:
    """conmon's one-line report on its sync pipe, read as it arrives (or to EOF); None when
    `timeout` passes first, or once `cancelled` is set (looked at every
    CREATE_POLL_SECONDS)."""
    poller = select.poll()
    poller.register(pipe.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    chunks = []
    while True:
        if cancelled is not None and cancelled.is_set():
            return None
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        if not poller.poll(min(left, CREATE_POLL_SECONDS) * 1000):
            continue
        chunk = pipe.read(4096)
        if not chunk:
            break
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    return b"".join(chunks)


def _parse_sync(message: bytes) -> tuple[int, str]:
    """conmon writes {"data": pid} or {"data": -1, "message": "..."} (older: "pid")."""
    try:
        document = json.loads(message.decode(errors="replace").splitlines()[0])
    except (ValueError, IndexError):
        return -1, ""
    pid = document.get("data", document.get("pid", -1))
    return int(pid), str(document.get("message", ""))


def _runtime_error(detail: str, runtime_log: Path, conmon_log: Path) -> str:
    """The most useful line: the runtime's last JSON error, else conmon's own words."""
    try:
        lines = runtime_log.read_text().splitlines()
    except OSError:
        lines = []
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level", "").lower() == "error":
            return str(entry.get("message") or entry.get("msg") or line).split("\n")[0]
    if detail:
        return detail.split("\n")[0]
    try:
        said = conmon_log.read_text(errors="replace").strip().splitlines()
    except OSError:
        said = []
    return f"conmon: {said[-1]}" if said else "conmon exited without reporting the container"


def _spawn_conmon(
    argv: list[str], conmon_log: Path, sync_fd: int, pid_file: Path
) -> subprocess.Popen[bytes]:
    """Starts conmon in its own session with its sync pipe, logging to `conmon_log`, and
    records its pid in `pid_file` (conmon writes its --conmon-pidfile only when it
    daemonizes, which it does not with --sync): the next agent waits on it by that pid."""
    log_fd = os.open(conmon_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with open(log_fd, "wb") as log:
        # Its umask reaches the log file it makes, the runtime and its files (the
        # container's process gets its own, from the bundle).
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(sync_fd,),
            env={**os.environ, "_OCI_SYNCPIPE": str(sync_fd)},
            start_new_session=True,
            umask=CHILD_UMASK,
            # conmon writes a file named `oom` into its working directory when the
            # container is OOM-killed: the bundle's, which goes with the container.
            cwd=conmon_log.parent,
        )
    try:
        # Whole or not at all: a reader never finds it half written.
        partial = pid_file.with_name(pid_file.name + ".new")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        with open(os.open(partial, flags, 0o600), "w") as written:
            written.write(str(process.pid))
        partial.replace(pid_file)
    except OSError:
        process.kill()
        process.wait()
        raise
    return process
