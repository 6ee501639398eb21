"""The OCI runtime command line (youki by default; runc and crun speak the same CLI)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from agent.hostfs import make_dir
from agent.runtime.errors import CommandError
from agent.runtime.process import run, run_here
from agent.runtime.sealed import SealedBinary

log = logging.getLogger(__name__)

# A delete that fails while the container still exists is tried again, this many times in
# all, waiting DELETE_BACKOFF seconds before the second and twice as long before each next.
DELETE_TRIES = 6
DELETE_BACKOFF = 0.25
# How long one start, delete or state may take.
START_SECONDS = 60
DELETE_SECONDS = 60
STATE_SECONDS = 30
# What `state` answers when the runtime printed something that is not its JSON document.
UNREADABLE_STATE = "unknown"


class OciRuntime:
    """Calls one OCI runtime binary with a state root of the agent's own."""

    def __init__(self, binary: str, root: Path, sealed_dir: Path | None = None) -> None:
        """`sealed_dir`: where to link a sealed copy of the binary to execute instead of
        the file (None: the file)."""
        self.binary = binary
        self.root = root
        make_dir(root)
        self._sealed = None if sealed_dir is None else SealedBinary.copy_of(binary, sealed_dir)
        # What is executed: the sealed copy when there is one (see agent.runtime.sealed).
        self.executable = binary if self._sealed is None else self._sealed.path

    def close(self) -> None:
        """Releases the sealed copy of the binary."""
        if self._sealed is not None:
            self._sealed.close()
            self._sealed = None
            self.executable = self.binary

    async def call(self, *args: str, timeout: float) -> str:
        """Runs `<runtime> ARGS` (argv[0] stays the binary's path); returns its stdout."""
        return await run([self.binary, *args], timeout=timeout, executable=self.executable)

    def call_here(self, *args: str, timeout: float) -> str:
        """call, blocking the calling thread (a worker thread)."""
        return run_here([self.binary, *args], timeout=timeout, executable=self.executable)

    def global_args(self, log_file: Path | None = None) -> list[str]:
        """Arguments that go before the subcommand: state root, and JSON logs to `log_file`."""
        args = ["--root", str(self.root)]
        if log_file is not None:
            args += ["--log", str(log_file), "--log-format", "json"]
        return args

    def start_here(self, container_id: str, log_file: Path) -> None:
        """Starts the process of a created container (blocking: from a worker thread)."""
        self.call_here(*self.global_args(log_file), "start", container_id, timeout=START_SECONDS)

    async def kill(self, container_id: str, signal: str) -> bool:
        """Sends a signal to the container's process; False when the container is gone."""
        try:
            await self.call(*self.global_args(), "kill", container_id, signal, timeout=30)
        except CommandError:
            if await self.state(container_id) not in (None, "stopped"):
                raise
            return False
        return True

    def delete_here(self, container_id: str) -> None:
        """Deletes the container (force: kills it first); a missing container is fine.
        Blocking: call it from a worker thread.

        A delete that fails while the container still exists is tried again, backing off
        (about 8 s in all): on a loaded host the killed processes can take longer to leave
        the container's cgroups than the runtime waits for them (youki: "failed to remove
        cgroup ... could not delete"), and a container given up on at once would leave its
        mounts, cgroups, state and bundle behind."""
        delay = DELETE_BACKOFF
        for attempt in range(1, DELETE_TRIES + 1):
            try:
                self.call_here(
                    *self.global_args(), "delete", "--force", container_id, timeout=DELETE_SECONDS
                )
                return
            except CommandError as error:
                if self._document(container_id, self._state_output_here(container_id)) is None:
                    return
                if attempt == DELETE_TRIES:
                    raise
                log.warning(
                    "deleting container %s failed (%s); trying again in %gs",
                    container_id,
                    str(error).splitlines()[0][:300],
                    delay,
                )
            time.sleep(delay)
            delay *= 2

    async def state(self, container_id: str) -> str | None:
        """Returns the container's status (created, running, stopped...) or None if unknown."""
        document = await self.describe(container_id)
        return None if document is None else str(document.get("status"))

    async def describe(self, container_id: str) -> dict[str, Any] | None:
        """The runtime's state document of the container (status, pid, created...), or
        None if it does not know the container. A state the runtime keeps but could not
        report (a failed or timed-out call, no output) has the status UNREADABLE_STATE."""
        if not container_id:
            return None
        try:
            output = await self.call(*self._state_args(container_id), timeout=STATE_SECONDS)
        except CommandError:
            output = None
        return self._document(container_id, output)

    def _state_args(self, container_id: str) -> list[str]:
        return [*self.global_args(), "state", container_id]

    def _state_output_here(self, container_id: str) -> str | None:
        """What `state` prints (None when it failed), blocking."""
        try:
            return self.call_here(*self._state_args(container_id), timeout=STATE_SECONDS)
        except CommandError:
            return None

    def _document(self, container_id: str, output: str | None) -> dict[str, Any] | None:
        """The state document in `state`'s output (None: the call failed)."""
        if not container_id:
            return None
        if output is None:
            if (self.root / container_id).exists():
                return {"status": UNREADABLE_STATE}
            return None
        try:
            document: dict[str, Any] = json.loads(output)
        except ValueError:
            # Seen while a delete was under way on a loaded host: nothing on stdout.
            return {"status": UNREADABLE_STATE}
        return document
