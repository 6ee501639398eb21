"""The OCI runtime command line (youki by default; runc and crun speak the same CLI)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.runtime.errors import CommandError
from agent.runtime.process import run


class OciRuntime:
    """Calls one OCI runtime binary with a state root of the agent's own."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def global_args(self, log_file: Path | None = None) -> list[str]:
        """Arguments that go before the subcommand: state root, and JSON logs to `log_file`."""
        args = ["--root", str(self.root)]
        if log_file is not None:
            args += ["--log", str(log_file), "--log-format", "json"]
        return args

    async def start(self, container_id: str, log_file: Path) -> None:
        """Starts the process of a created container."""
        await run([self.binary, *self.global_args(log_file), "start", container_id], timeout=60)

    async def kill(self, container_id: str, signal: str) -> bool:
        """Sends a signal to the container's process; False when the container is gone."""
        try:
            await run([self.binary, *self.global_args(), "kill", container_id, signal], timeout=30)
        except CommandError:
            if await self.state(container_id) not in (None, "stopped"):
                raise
            return False
        return True

    async def delete(self, container_id: str) -> None:
        """Deletes the container (force: kills it first); a missing container is fine."""
        try:
            await run(
                [self.binary, *self.global_args(), "delete", "--force", container_id], timeout=60
            )
        except CommandError:
            if await self.state(container_id) is not None:
                raise

    async def state(self, container_id: str) -> str | None:
        """Returns the container's status (created, running, stopped...) or None if unknown."""
        try:
            output = await run(
                [self.binary, *self.global_args(), "state", container_id], timeout=30
            )
        except CommandError:
            return None
        document: dict[str, Any] = json.loads(output)
        return str(document.get("status"))
