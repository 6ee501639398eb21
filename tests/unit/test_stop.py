"""The manager's stop: the stop signal, the grace period, then SIGKILL; a stop signal the
runtime refuses never leaves the container running."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from agent.runtime.errors import CommandError
from agent.runtime.manager import STOP_SIGNAL_ANNOTATION, ContainerManager
from tests.unit.test_manager_close import manager_on, paths_under

CONTAINER = "ja-0123"


class Runtime:
    """Stands in for the runtime's command line: `kill` refuses any signal youki does not
    know (as `youki kill` does: "invalid signal"), `state` reports the container running
    until a signal that ends it arrives."""

    def __init__(self) -> None:
        self.signals: list[str] = []
        self.ended = asyncio.Event()

    async def call(self, *args: str, timeout: float) -> str:
        command, container_id, *rest = args[args.index("--root") + 2 :]
        if command == "state":
            status = "stopped" if self.ended.is_set() else "running"
            return json.dumps({"id": container_id, "status": status})
        assert command == "kill"
        signal = rest[0]
        self.signals.append(signal)
        if signal not in ("SIGTERM", "SIGKILL"):
            raise CommandError(["youki", "kill"], 1, f"invalid signal: {signal}")
        if signal == "SIGKILL":
            self.ended.set()
        return ""


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ContainerManager, Runtime]:
    manager = manager_on(paths_under(tmp_path))
    runtime = Runtime()

    async def wait(container_id: str) -> int:
        await runtime.ended.wait()
        return 137

    monkeypatch.setattr(manager.runtime, "call", runtime.call)
    monkeypatch.setattr(manager.monitor, "wait", wait)
    monkeypatch.setattr(manager.monitor, "exit_code", lambda container_id: None)
    return manager, runtime


def bundle_with_stop_signal(manager: ContainerManager, stop_signal: str) -> None:
    """A bundle whose config holds `stop_signal` as its annotation, unchecked (as an agent
    before the image's StopSignal was checked wrote it)."""
    directory = manager.paths.bundles / CONTAINER
    directory.mkdir(parents=True)
    config = {"annotations": {STOP_SIGNAL_ANNOTATION: stop_signal}}
    (directory / "config.json").write_text(json.dumps(config))


async def test_a_stop_signal_the_runtime_refuses_goes_on_to_sigkill(
    manager: tuple[ContainerManager, Runtime],
) -> None:
    """A bundle names a stop signal the runtime does not know (an image's StopSignal:
    SIGBOGUS): the stop sends SIGKILL at once instead of raising and leaving the
    container running, whatever grace period was asked for."""
    containers, runtime = manager
    bundle_with_stop_signal(containers, "SIGBOGUS")
    await asyncio.wait_for(containers.stop(CONTAINER, grace_seconds=600), 5)
    assert runtime.signals == ["SIGBOGUS", "SIGKILL"]


async def test_a_known_stop_signal_waits_out_the_grace_period_before_sigkill(
    manager: tuple[ContainerManager, Runtime],
) -> None:
    """The usual path stays: the stop signal, the grace period, then SIGKILL."""
    containers, runtime = manager
    bundle_with_stop_signal(containers, "SIGTERM")
    await asyncio.wait_for(containers.stop(CONTAINER, grace_seconds=0.2), 5)
    assert runtime.signals == ["SIGTERM", "SIGKILL"]
