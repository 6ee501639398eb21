"""A scriptable in-memory runtime for unit tests of the executor's logic."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from pathlib import Path

from agent.domain import ImageSpec
from agent.runtime.errors import (
    ContainerCreateError,
    ContainerStartError,
    ImagePullError,
    MonitorLost,
)
from agent.runtime.images import Image, ImageConfig, PruneResult
from agent.runtime.manager import ContainerRequest, ExitStatus

# When every container the fake started was started, as the runtime reports it.
STARTED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class FakeRuntime:
    """Records calls; containers end when a test calls `exit()` (or when stopped)."""

    def __init__(self) -> None:
        self.pull_error: str | None = None
        self.create_error: str | None = None
        self.start_error: str | None = None
        self.pull_gate: asyncio.Event | None = None
        self.remove_gate: asyncio.Event | None = None
        self.start_gate: asyncio.Event | None = None
        self.created: list[str] = []
        self.requests: list[ContainerRequest] = []
        self.started: list[str] = []
        self.removed: list[str] = []
        self.forgotten: list[str] = []
        self.stop_signals: list[str | None] = []
        self.pruned_with: tuple[frozenset[str], int | None] | None = None
        self.stopped: list[tuple[str, float]] = []
        self.alive: set[str] = set()
        # Bytes each container writes on the data disk (disk_usage).
        self.usage: dict[str, int] = {}
        self.exits: dict[str, asyncio.Future[ExitStatus]] = {}
        self.started_event = asyncio.Event()

    def _future(self, container_id: str) -> asyncio.Future[ExitStatus]:
        if container_id not in self.exits:
            self.exits[container_id] = asyncio.get_running_loop().create_future()
        return self.exits[container_id]

    def exit(self, container_id: str, code: int, oom: bool = False) -> None:
        """Makes the container's process end."""
        self.alive.discard(container_id)
        future = self._future(container_id)
        if not future.done():
            future.set_result(ExitStatus(code, oom))

    def lose(self, container_id: str) -> None:
        """Makes the container's monitor die without recording its exit."""
        future = self._future(container_id)
        if not future.done():
            future.set_exception(MonitorLost(f"{container_id} is lost"))

    async def pull(self, image: ImageSpec) -> Image:
        if self.pull_gate is not None:
            await self.pull_gate.wait()
        if self.pull_error:
            raise ImagePullError(self.pull_error)
        return Image(image.name, "sha256:" + "0" * 64, Path("/nonexistent"), ImageConfig())

    async def create(self, request: ContainerRequest, image: Image) -> None:
        if self.create_error:
            raise ContainerCreateError(self.create_error)
        self.created.append(request.container_id)
        self.requests.append(request)
        self._future(request.container_id)

    async def start(self, container_id: str) -> None:
        if self.start_gate is not None:
            await self.start_gate.wait()
        if self.start_error:
            raise ContainerStartError(self.start_error)
        self.started.append(container_id)
        self.alive.add(container_id)
        self.started_event.set()

    async def run(self, request: ContainerRequest, image: Image) -> None:
        # As the real one: a cancel before the start leaves the container created, one
        # during the start waits for it to end.
        await self.create(request, image)
        starting = asyncio.ensure_future(self.start(request.container_id))
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            with contextlib.suppress(ContainerStartError):
                await starting
            raise

    async def wait(self, container_id: str) -> ExitStatus:
        return await asyncio.shield(self._future(container_id))

    def exit_status(self, container_id: str) -> ExitStatus | None:
        future = self.exits.get(container_id)
        return future.result() if future is not None and future.done() else None

    def containers(self) -> list[str]:
        return [c for c in self.created if c not in self.removed]

    def disk_usage(self, container_id: str) -> int:
        return self.usage.get(container_id, 0)

    async def started_at(self, container_id: str) -> datetime | None:
        if container_id in self.started and container_id not in self.removed:
            return STARTED_AT
        return None

    async def is_alive(self, container_id: str) -> bool:
        return container_id in self.alive

    async def stop(
        self, container_id: str, grace_seconds: float, signal: str | None = None
    ) -> None:
        self.stopped.append((container_id, grace_seconds))
        self.stop_signals.append(signal)
        self.exit(container_id, 143)

    async def remove(self, container_id: str, forget: bool = False) -> None:
        if self.remove_gate is not None:
            await self.remove_gate.wait()
        self.removed.append(container_id)
        self.alive.discard(container_id)
        if forget:
            await self.forget(container_id)

    async def forget(self, container_id: str) -> None:
        # As the real one drops conmon's exit file: a restarted agent no longer knows it.
        self.forgotten.append(container_id)
        future = self.exits.get(container_id)
        if future is not None and future.done():
            del self.exits[container_id]

    async def prune_images(self, in_use: set[str], budget_bytes: int | None) -> PruneResult:
        self.pruned_with = (frozenset(in_use), budget_bytes)
        return PruneResult((), 0)
