"""The manager creates and then starts a container in one worker thread: a caller cancelled
before the start leaves the container created and never started; one cancelled during the
start waits for it to end, so that whether the process runs is known."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from agent.domain import ImageSpec
from agent.runtime.images import Image, ImageConfig
from agent.runtime.manager import ContainerManager, ContainerRequest
from tests.unit.test_manager_close import manager_on, paths_under

CONTAINER = "ja-0123"


class Steps:
    """Stands in for the manager's blocking create and start, each held until released."""

    def __init__(self) -> None:
        self.creating = threading.Event()
        self.created = threading.Event()
        self.starting = threading.Event()
        self.start_released = threading.Event()
        self.started: list[str] = []
        self.cancels: list[threading.Event | None] = []

    def create(
        self, request: ContainerRequest, image: Image, cancelled: threading.Event | None = None
    ) -> None:
        self.cancels.append(cancelled)
        self.creating.set()
        assert self.created.wait(10)

    def start(self, container_id: str) -> None:
        self.starting.set()
        assert self.start_released.wait(10)
        self.started.append(container_id)


@pytest.fixture
def steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ContainerManager, Steps]:
    manager = manager_on(paths_under(tmp_path))
    fake = Steps()
    monkeypatch.setattr(manager, "_create", fake.create)
    monkeypatch.setattr(manager, "_start_here", fake.start)
    return manager, fake


def request() -> tuple[ContainerRequest, Image]:
    image = Image("busybox:latest", "sha256:" + "0" * 64, Path("/nonexistent"), ImageConfig())
    return ContainerRequest(CONTAINER, ImageSpec("busybox:latest"), Path("/nonexistent")), image


async def wait_for(event: threading.Event) -> None:
    assert await asyncio.to_thread(event.wait, 10)


async def cancel_while_blocked(
    manager: ContainerManager, reached: threading.Event, release: threading.Event
) -> None:
    """Runs a container, cancels the run once its worker has `reached` a step, checks that
    the caller still waits for that step, then lets it go on (`release`); the run ends
    cancelled."""
    running = asyncio.ensure_future(manager.run(*request()))
    await wait_for(reached)
    running.cancel()
    await asyncio.sleep(0.05)
    assert not running.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await running


async def test_a_cancel_during_the_create_leaves_the_container_unstarted(
    steps: tuple[ContainerManager, Steps],
) -> None:
    manager, fake = steps
    # The caller waits for the creation it cut short: its cleanup removes what exists. The
    # create is told, so that one that would never end is killed (ConmonMonitor).
    await cancel_while_blocked(manager, fake.creating, fake.created)
    assert [event is not None and event.is_set() for event in fake.cancels] == [True]
    assert not fake.starting.is_set()
    assert fake.started == []


async def test_a_cancel_during_the_start_waits_for_the_start(
    steps: tuple[ContainerManager, Steps],
) -> None:
    manager, fake = steps
    fake.created.set()
    await cancel_while_blocked(manager, fake.starting, fake.start_released)
    assert fake.started == [CONTAINER]


async def test_an_uncancelled_run_creates_then_starts(
    steps: tuple[ContainerManager, Steps],
) -> None:
    manager, fake = steps
    fake.created.set()
    fake.start_released.set()
    await manager.run(*request())
    assert fake.started == [CONTAINER]
