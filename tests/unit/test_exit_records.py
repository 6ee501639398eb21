"""Every container an execution made leaves no exit record once the execution has ended,
whichever way it ended (found by the soak: cancels while a container was being started
left conmon's exit file and oom directory, and every container its attach link)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.domain import Execution, FailureReason, ImageSpec, JobSpec, Status, Trigger, TriggerKind
from agent.executor import Executor
from agent.runtime.monitor import ConmonMonitor
from agent.runtime.oci import OciRuntime
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime

TRIGGER = Trigger(TriggerKind.ENDPOINT, remote_address="ipv4:127.0.0.1:1")


@pytest.fixture
async def make(tmp_path: Path, runtime: FakeRuntime) -> AsyncIterator[Callable[..., Executor]]:
    store = Store(tmp_path / "agent.db")
    made: list[Executor] = []

    def make(spec: JobSpec) -> Executor:
        executor = Executor(store, runtime, tmp_path / "logs", stop_grace=2.0)
        executor.register_jobs([spec], "", replace_existing=False)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        await executor.close()
    store.close()


async def ended(executor: Executor, runtime: FakeRuntime, execution_id: str) -> Execution:
    """The execution once terminal, and its container forgotten (or a second gone by)."""
    async for _ in executor.watch(execution_id):
        pass
    final = executor.get_execution(execution_id)
    for _ in range(100):
        if final.container_id in runtime.forgotten:
            break
        await asyncio.sleep(0.01)
    return final


async def created(runtime: FakeRuntime) -> None:
    for _ in range(500):
        if runtime.created:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no container was created")


def forgot_every_container(runtime: FakeRuntime, container_id: str) -> None:
    assert container_id in runtime.forgotten
    assert set(runtime.created) | set(runtime.removed) <= set(runtime.forgotten)


async def test_a_cancel_while_the_container_starts_forgets_it(
    make: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    executor = make(JobSpec("sleepy", ImageSpec("busybox")))
    runtime.start_gate = asyncio.Event()
    execution = await executor.trigger("sleepy", TRIGGER)
    await created(runtime)
    # The cancel waits for the runtime's start to end: whether the process runs is known.
    cancelling = asyncio.ensure_future(executor.cancel(execution.id))
    await asyncio.sleep(0.01)
    assert not cancelling.done()
    runtime.start_gate.set()
    final = await cancelling
    assert final.status is Status.CANCELLED
    await ended(executor, runtime, execution.id)
    assert execution.container_id in runtime.removed
    forgot_every_container(runtime, execution.container_id)


async def test_a_cancel_while_the_image_is_pulled_forgets_the_container(
    make: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    executor = make(JobSpec("sleepy", ImageSpec("busybox")))
    runtime.pull_gate = asyncio.Event()
    execution = await executor.trigger("sleepy", TRIGGER)
    await asyncio.sleep(0.01)
    assert (await executor.cancel(execution.id)).status is Status.CANCELLED
    await ended(executor, runtime, execution.id)
    forgot_every_container(runtime, execution.container_id)


@pytest.mark.parametrize(
    ("attribute", "reason"),
    [("create_error", FailureReason.CREATE), ("start_error", FailureReason.START)],
)
async def test_a_container_that_failed_to_be_made_or_started_is_forgotten(
    make: Callable[..., Executor], runtime: FakeRuntime, attribute: str, reason: FailureReason
) -> None:
    executor = make(JobSpec("broken", ImageSpec("busybox")))
    setattr(runtime, attribute, "it broke")
    execution = await executor.trigger("broken", TRIGGER)
    final = await ended(executor, runtime, execution.id)
    assert (final.status, final.failure_reason) == (Status.FAILED, reason)
    forgot_every_container(runtime, execution.container_id)


async def test_a_deadline_while_the_container_starts_forgets_it(
    make: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    executor = make(JobSpec("stuck", ImageSpec("busybox"), timeout_seconds=0.1))
    runtime.start_gate = asyncio.Event()
    execution = await executor.trigger("stuck", TRIGGER)
    # Past the deadline, the runtime's start (cut short by its own timeout) ends.
    await asyncio.sleep(0.3)
    assert not executor.get_execution(execution.id).status.terminal
    runtime.start_gate.set()
    final = await ended(executor, runtime, execution.id)
    assert final.failure_reason is FailureReason.DEADLINE_EXCEEDED
    assert runtime.created == [execution.container_id]
    forgot_every_container(runtime, execution.container_id)


def test_forget_removes_the_exit_file_the_oom_directory_and_the_attach_link(
    tmp_path: Path,
) -> None:
    exits, sockets = tmp_path / "exits", tmp_path / "attach"
    monitor = ConmonMonitor("conmon", OciRuntime("true", tmp_path / "state"), exits, sockets)
    container = "ja-0123"
    monitor.exit_file(container).write_text("137")
    monitor.persist_dir(container).mkdir()
    (monitor.persist_dir(container) / "oom").touch()
    # As conmon leaves it: a link to the bundle, dangling once the bundle is removed.
    monitor.attach_link(container).symlink_to(tmp_path / "bundles" / container)
    monitor.forget(container)
    assert list(exits.iterdir()) == []
    assert list(sockets.iterdir()) == []
