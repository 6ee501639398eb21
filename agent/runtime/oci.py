"""The OCI runtime command line (youki by default; runc and crun speak the same CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.hostfs import make_dir
from agent.runtime.errors import CommandError
from agent.runtime.process import run
from agent.runtime.sealed import SealedBinary


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

    def global_args(self, log_file: Path | None = None) -> list[str]:
        """Arguments that go before the subcommand: state root, and JSON logs to `log_file`."""
        args = ["--root", str(self.root)]
        if log_file is not None:
            args += ["--log", str(log_file), "--log-format", "json"]
        return args

    async def start(self, container_id: str, log_file: Path) -> None:
        """Starts the process of a created container."""
        await self.call(*self.global_args(log_file), "start", container_id, timeout=60)

    async def kill(self, container_id: str, signal: str) -> bool:
        """Sends a signal to the container's process; False when the container is gone."""
        try:
            await self.call(*self.global_args(), "kill", container_id, signal, timeout=30)
        except CommandError:
            if await self.state(container_id) not in (None, "stopped"):
                raise
            return False
        return True

    async def delete(self, container_id: str) -> None:
        """Deletes the container (force: kills it first); a missing container is fine."""
        try:
            await self.call(*self.global_args(), "delete", "--force", container_id, timeout=60)
        except CommandError:
            if await self.state(container_id) is not None:
                raise

    async def state(self, container_id: str) -> str | None:
        """Returns the container's status (created, running, stopped...) or None if unknown."""
        document = await self.describe(container_id)
        return None if document is None else str(document.get("status"))

    async def describe(self, container_id: str) -> dict[str, Any] | None:
        """The runtime's state document of the container (status, pid, created...), or
        None if it does not know the container."""
        try:
            output = await self.call(*self.global_args(), "state", container_id, timeout=30)
        except CommandError:
            return None
        document: dict[str, Any] = json.loads(output)
        return document
