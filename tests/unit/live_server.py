"""A real AgentServer (gRPC on 127.0.0.1, a fake runtime) in a thread of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.api.server import AgentServer
from agent.domain import HostPolicy
from agent.executor import Executor
from agent.executor.scheduler import CronScheduler
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime


@contextmanager
def live_server(directory: Path, policy: HostPolicy | None = None) -> Iterator[str]:
    """Serves until the block ends; yields the target (127.0.0.1:port)."""
    loop = asyncio.new_event_loop()
    port: list[int] = []
    parts: dict[str, Any] = {}

    async def start() -> None:
        store = Store(directory / "db")
        executor = Executor(store, FakeRuntime(), directory / "logs", host_policy=policy)
        server = AgentServer(executor, CronScheduler(executor, store))
        port.append(server.listen("127.0.0.1:0"))
        await executor.start()
        await server.start()
        parts.update(store=store, executor=executor, server=server)

    async def stop() -> None:
        await parts["server"].stop(0)
        await parts["executor"].close()
        parts["store"].close()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield f"127.0.0.1:{port[0]}"
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
