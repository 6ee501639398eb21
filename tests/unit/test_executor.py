"""The executor's logic against a fake runtime and a real SQLite store."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.domain import (
    EventKind,
    Execution,
    ExecutionEvent,
    ExecutionFilter,
    FailureReason,
    ImageSpec,
    JobSpec,
    Status,
    Trigger,
    TriggerKind,
)
from agent.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidSpec,
    NotFound,
    Unavailable,
)
from agent.executor import Executor
from agent.executor.events import EventBus
from agent.executor.recorder import Recorder
from agent.executor.retention import RetentionPolicy
from agent.store import Store
from tests.unit.fake_runtime import STARTED_AT, FakeRuntime

SPEC = JobSpec(name="backup", image=ImageSpec("busybox:latest"))
TRIGGER = Trigger(TriggerKind.ENDPOINT, remote_address="ipv4:127.0.0.1:1")


@pytest.fixture
async def executor(tmp_path: Path, runtime: FakeRuntime) -> AsyncIterator[Executor]:
    store = Store(tmp_path / "agent.db")
    executor = Executor(store, runtime, tmp_path / "logs", stop_grace=2.0)
    executor.register_jobs([SPEC], "", replace_existing=False)
    yield executor
    await executor.close()
    store.close()


async def statuses_until_terminal(executor: Executor, execution_id: str) -> list[Status]:
    return [event.execution.status async for event in executor.watch(execution_id)]


async def running(executor: Executor, runtime: FakeRuntime) -> Execution:
    execution = await executor.trigger("backup", TRIGGER)
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    await asyncio.sleep(0)
    return executor.get_execution(execution.id)


async def test_exit_zero_completes_and_removes_the_container(
    executor: Executor, runtime: FakeRuntime
) -> None:
    execution = await running(executor, runtime)
    assert execution.status is Status.RUNNING
    assert execution.started_at is not None
    runtime.exit(execution.container_id, 0)
    await statuses_until_terminal(executor, execution.id)
    await asyncio.sleep(0.01)
    final = executor.get_execution(execution.id)
    assert final.status is Status.COMPLETED
    assert final.exit_code == 0
    assert final.finished_at is not None and final.started_at is not None
    assert final.duration is not None and final.duration.total_seconds() >= 0
    assert runtime.removed == [execution.container_id]


async def test_nonzero_exit_fails_with_exit_code_reason(
    executor: Executor, runtime: FakeRuntime
) -> None:
    execution = await running(executor, runtime)
    runtime.exit(execution.container_id, 3)
    await statuses_until_terminal(executor, execution.id)
    final = executor.get_execution(execution.id)
    assert (final.status, final.exit_code, final.failure_reason) == (
        Status.FAILED,
        3,
        FailureReason.EXIT_CODE,
    )


async def test_oom_is_reported_as_its_own_reason(executor: Executor, runtime: FakeRuntime) -> None:
    execution = await running(executor, runtime)
    runtime.exit(execution.container_id, 137, oom=True)
    await statuses_until_terminal(executor, execution.id)
    assert executor.get_execution(execution.id).failure_reason is FailureReason.OOM_KILLED


@pytest.mark.parametrize(
    ("attribute", "reason"),
    [
        ("pull_error", FailureReason.IMAGE_PULL),
        ("create_error", FailureReason.CREATE),
        ("start_error", FailureReason.START),
    ],
)
async def test_each_phase_failure_has_its_reason_and_message(
    executor: Executor, runtime: FakeRuntime, attribute: str, reason: FailureReason
) -> None:
    setattr(runtime, attribute, "it broke")
    execution = await executor.trigger("backup", TRIGGER)
    statuses = await statuses_until_terminal(executor, execution.id)
    final = executor.get_execution(execution.id)
    assert statuses[-1] is Status.FAILED
    assert final.failure_reason is reason
    assert final.message == "it broke"
    assert Status.RUNNING not in statuses


async def test_watch_sees_every_transition_once_in_order(
    executor: Executor, runtime: FakeRuntime
) -> None:
    runtime.pull_gate = asyncio.Event()
    execution = await executor.trigger("backup", TRIGGER)
    watched: list[tuple[int, Status]] = []

    async def watch() -> None:
        async for event in executor.watch(execution.id):
            watched.append((event.sequence, event.execution.status))

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.01)
    runtime.pull_gate.set()
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    runtime.exit(execution.container_id, 0)
    await asyncio.wait_for(task, 5)
    statuses = [status for _, status in watched]
    assert statuses == [Status.INITIALIZING, Status.RUNNING, Status.COMPLETED]
    sequences = [sequence for sequence, _ in watched]
    assert sequences == sorted(set(sequences))


async def test_cancel_while_running_stops_with_grace_and_ends_cancelled(
    executor: Executor, runtime: FakeRuntime
) -> None:
    execution = await running(executor, runtime)
    final = await executor.cancel(execution.id, grace_seconds=1.5)
    assert final.status is Status.CANCELLED
    assert final.exit_code == 143
    assert runtime.stopped == [(execution.container_id, 1.5)]
    assert execution.container_id in runtime.removed


async def test_cancel_while_initializing_removes_what_was_made(
    executor: Executor, runtime: FakeRuntime
) -> None:
    runtime.pull_gate = asyncio.Event()
    execution = await executor.trigger("backup", TRIGGER)
    await asyncio.sleep(0.01)
    assert executor.get_execution(execution.id).status is Status.INITIALIZING
    final = await executor.cancel(execution.id)
    assert final.status is Status.CANCELLED
    assert runtime.started == []
    assert execution.container_id in runtime.removed


async def test_cancel_right_after_trigger_ends_cancelled(
    executor: Executor, runtime: FakeRuntime
) -> None:
    execution = await executor.trigger("backup", TRIGGER)
    final = await executor.cancel(execution.id)
    assert final.status is Status.CANCELLED
    assert executor.get_execution(execution.id).status is Status.CANCELLED
    assert runtime.started == []


async def test_cancel_of_a_finished_execution_is_a_failed_precondition(
    executor: Executor, runtime: FakeRuntime
) -> None:
    execution = await running(executor, runtime)
    runtime.exit(execution.container_id, 0)
    await statuses_until_terminal(executor, execution.id)
    with pytest.raises(FailedPrecondition):
        await executor.cancel(execution.id)


async def test_a_late_runtime_result_never_overwrites_cancelled(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    store = Store(tmp_path / "late.db")
    executor = Executor(store, runtime, tmp_path / "logs")
    executor.register_jobs([SPEC], "", replace_existing=False)
    execution = await running(executor, runtime)
    await executor.cancel(execution.id)
    cancelled = executor.get_execution(execution.id)
    # A writer holding the Running snapshot comes late: the store refuses it.
    late = Recorder(store, EventBus()).transition(execution, Status.COMPLETED, exit_code=0)
    assert late == cancelled == executor.get_execution(execution.id)
    await executor.close()
    store.close()


async def test_unknown_job_and_execution_are_not_found(executor: Executor) -> None:
    with pytest.raises(NotFound):
        await executor.trigger("nope", TRIGGER)
    with pytest.raises(NotFound):
        executor.get_execution("0" * 32)
    with pytest.raises(NotFound):
        await executor.cancel("0" * 32)
    with pytest.raises(NotFound):
        async for _ in executor.watch("0" * 32):
            pass


async def test_container_ids_are_unique_per_execution(
    executor: Executor, runtime: FakeRuntime
) -> None:
    executions = [await executor.trigger("backup", TRIGGER) for _ in range(20)]
    assert len({execution.container_id for execution in executions}) == 20
    for execution in executions:
        await executor.cancel(execution.id)


async def test_register_refuses_a_changed_spec_unless_replace(executor: Executor) -> None:
    changed = JobSpec(name="backup", image=ImageSpec("busybox:1.36"))
    executor.register_jobs([SPEC], "", replace_existing=False)
    with pytest.raises(AlreadyExists):
        executor.register_jobs([changed], "", replace_existing=False)
    (job,) = executor.register_jobs([changed], "", replace_existing=True)
    assert executor.get_job("backup").spec.image.name == "busybox:1.36"
    assert job.updated_at >= job.created_at


async def test_unregister_refuses_while_an_execution_is_active(
    executor: Executor, runtime: FakeRuntime
) -> None:
    execution = await running(executor, runtime)
    with pytest.raises(FailedPrecondition):
        executor.unregister_job("backup")
    runtime.exit(execution.container_id, 0)
    await statuses_until_terminal(executor, execution.id)
    executor.unregister_job("backup")
    with pytest.raises(NotFound):
        executor.get_job("backup")
    assert executor.get_execution(execution.id).status is Status.COMPLETED


async def test_restart_readopts_running_and_fails_lost_containers(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    store = Store(tmp_path / "agent.db")
    first = Executor(store, runtime, tmp_path / "logs")
    first.register_jobs([SPEC], "", replace_existing=False)
    kept = await first.trigger("backup", TRIGGER)
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    runtime.started_event.clear()
    lost = await first.trigger("backup", TRIGGER)
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    await asyncio.sleep(0.01)
    await first.close()
    runtime.alive.discard(lost.container_id)

    second = Executor(store, runtime, tmp_path / "logs")
    with pytest.raises(Unavailable):
        await first.trigger("backup", TRIGGER)
    await second.start()
    assert second.get_execution(lost.id).failure_reason is FailureReason.AGENT_LOST
    assert second.get_execution(kept.id).status is Status.RUNNING
    runtime.exit(kept.container_id, 0)
    await statuses_until_terminal(second, kept.id)
    assert second.get_execution(kept.id).status is Status.COMPLETED
    await second.close()
    store.close()


async def test_shutdown_while_initializing_takes_back_the_container_and_restarts_later(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    store = Store(tmp_path / "agent.db")
    first = Executor(store, runtime, tmp_path / "logs")
    first.register_jobs([SPEC], "", replace_existing=False)
    runtime.pull_gate = asyncio.Event()
    execution = await first.trigger("backup", TRIGGER)
    await asyncio.sleep(0.01)
    await first.close()
    assert execution.container_id in runtime.removed
    assert store.get_execution(execution.id).status is Status.INITIALIZING

    runtime.pull_gate.set()
    second = Executor(store, runtime, tmp_path / "logs")
    await second.start()
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    runtime.exit(execution.container_id, 0)
    assert (await statuses_until_terminal(second, execution.id))[-1] is Status.COMPLETED
    await second.close()
    store.close()


async def initializing_when_the_agent_died(
    tmp_path: Path, runtime: FakeRuntime, store: Store
) -> Execution:
    """An execution left Initializing by an agent that went down during its pull."""
    first = Executor(store, runtime, tmp_path / "logs")
    first.register_jobs([SPEC], "", replace_existing=False)
    runtime.pull_gate = asyncio.Event()
    execution = await first.trigger("backup", TRIGGER)
    await asyncio.sleep(0.01)
    await first.close()
    runtime.pull_gate = None
    runtime.removed.clear()
    assert store.get_execution(execution.id).status is Status.INITIALIZING
    return execution


async def test_a_process_started_before_running_was_recorded_is_followed_not_run_again(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    store = Store(tmp_path / "agent.db")
    execution = await initializing_when_the_agent_died(tmp_path, runtime, store)
    # The dead agent had created and started the container, and died before recording it.
    runtime.created.append(execution.container_id)
    await runtime.start(execution.container_id)

    second = Executor(store, runtime, tmp_path / "logs")
    await second.start()
    adopted = second.get_execution(execution.id)
    assert (adopted.status, adopted.started_at) == (Status.RUNNING, STARTED_AT)
    runtime.exit(execution.container_id, 4)
    assert (await statuses_until_terminal(second, execution.id))[-1] is Status.FAILED
    final = second.get_execution(execution.id)
    assert (final.exit_code, final.failure_reason) == (4, FailureReason.EXIT_CODE)
    assert [attempt.exit_code for attempt in store.list_attempts(execution.id)] == [4]
    assert runtime.created == runtime.started == [execution.container_id]
    await second.close()
    store.close()


async def test_a_container_created_and_never_started_is_removed_and_the_run_starts_afresh(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    store = Store(tmp_path / "agent.db")
    execution = await initializing_when_the_agent_died(tmp_path, runtime, store)
    runtime.created.append(execution.container_id)
    runtime.removed.clear()
    runtime.forgotten.clear()

    second = Executor(store, runtime, tmp_path / "logs")
    await second.start()
    assert runtime.removed == runtime.forgotten == [execution.container_id]
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    runtime.exit(execution.container_id, 0)
    assert (await statuses_until_terminal(second, execution.id))[-1] is Status.COMPLETED
    assert runtime.started == [execution.container_id]
    await second.close()
    store.close()


async def test_the_deadline_stops_a_running_container(
    make_executor: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    executor = make_executor(
        JobSpec("slow", ImageSpec("busybox"), timeout_seconds=0.05, stop_grace_seconds=7)
    )
    execution = await executor.trigger("slow", TRIGGER)
    statuses = await statuses_until_terminal(executor, execution.id)
    final = executor.get_execution(execution.id)
    assert statuses[-2:] == [Status.RUNNING, Status.FAILED]
    assert (final.failure_reason, final.exit_code) == (FailureReason.DEADLINE_EXCEEDED, 143)
    assert runtime.stopped == [(execution.container_id, 7)]


async def test_the_deadline_also_bounds_initialization(
    make_executor: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    executor = make_executor(JobSpec("stuck", ImageSpec("busybox"), timeout_seconds=0.05))
    runtime.pull_gate = asyncio.Event()
    execution = await executor.trigger("stuck", TRIGGER)
    await statuses_until_terminal(executor, execution.id)
    final = executor.get_execution(execution.id)
    assert final.failure_reason is FailureReason.DEADLINE_EXCEEDED
    assert "timeout of 0.05s" in final.message
    assert runtime.started == []


async def test_cancel_uses_the_jobs_grace_period_unless_the_request_names_one(
    make_executor: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    executor = make_executor(
        JobSpec("graceful", ImageSpec("busybox"), stop_grace_seconds=3), stop_grace=10
    )
    first = await executor.trigger("graceful", TRIGGER)
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    await asyncio.sleep(0)
    await executor.cancel(first.id)
    runtime.started_event.clear()
    second = await executor.trigger("graceful", TRIGGER)
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    await asyncio.sleep(0)
    await executor.cancel(second.id, grace_seconds=0.5)
    assert runtime.stopped == [(first.container_id, 3), (second.container_id, 0.5)]


async def test_executions_beyond_the_job_limit_wait_in_fifo_order(
    make_executor: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    executor = make_executor(JobSpec("one", ImageSpec("busybox"), max_concurrent=1))
    first, second, third = [await executor.trigger("one", TRIGGER) for _ in range(3)]
    assert (first.queue_position, second.queue_position, third.queue_position) == (0, 1, 2)
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    assert executor.get_execution(third.id).queue_position == 2
    assert executor.get_execution(second.id).status is Status.PENDING
    events = [event async for event in _until(executor.watch(second.id), EventKind.QUEUED)]
    assert events[-1].kind is EventKind.QUEUED

    assert (await executor.cancel(third.id)).status is Status.CANCELLED
    runtime.started_event.clear()
    runtime.exit(first.container_id, 0)
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    assert runtime.started == [first.container_id, second.container_id]
    runtime.exit(second.container_id, 0)
    await statuses_until_terminal(executor, second.id)
    assert third.container_id not in runtime.created


async def test_the_slot_is_free_once_the_outcome_is_recorded(
    make_executor: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    """The next execution starts while the first one's exited container is being removed."""
    executor = make_executor(JobSpec("one", ImageSpec("busybox"), max_concurrent=1))
    first, second = [await executor.trigger("one", TRIGGER) for _ in range(2)]
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    runtime.remove_gate = asyncio.Event()
    runtime.started_event.clear()
    runtime.exit(first.container_id, 0)
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    assert executor.get_execution(first.id).status is Status.COMPLETED
    assert runtime.started == [first.container_id, second.container_id]
    assert first.container_id not in runtime.removed
    runtime.remove_gate.set()
    runtime.exit(second.container_id, 0)
    await statuses_until_terminal(executor, second.id)


async def _until(
    events: AsyncIterator[ExecutionEvent], kind: EventKind
) -> AsyncIterator[ExecutionEvent]:
    """The events up to the first of `kind` (the watch starts at the latest one)."""
    async for event in events:
        yield event
        if event.kind is kind:
            return


async def test_an_agent_error_still_ends_the_execution(
    executor: Executor, runtime: FakeRuntime
) -> None:
    async def broken(request: object, image: object) -> None:
        raise RuntimeError("disk on fire")

    runtime.create = broken  # type: ignore[method-assign]
    execution = await executor.trigger("backup", TRIGGER)
    await statuses_until_terminal(executor, execution.id)
    final = executor.get_execution(execution.id)
    assert (final.status, final.failure_reason) == (Status.FAILED, FailureReason.AGENT_ERROR)
    assert "disk on fire" in final.message


async def test_images_of_registered_jobs_are_kept_by_the_image_budget(
    make_executor: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    policy = RetentionPolicy(image_budget_bytes=1 << 30, interval_seconds=3600)
    executor = make_executor(SPEC, retention=policy)
    await executor.start()
    collecting = asyncio.ensure_future(executor.collect_images_forever())
    for _ in range(100):
        if runtime.pruned_with is not None:
            break
        await asyncio.sleep(0.01)
    collecting.cancel()
    assert runtime.pruned_with == (frozenset({"busybox:latest"}), 1 << 30)


async def test_start_sweeps_containers_that_no_active_execution_owns(
    make_executor: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    first = make_executor(SPEC)
    finished = await running(first, runtime)
    runtime.exit(finished.container_id, 0)
    await statuses_until_terminal(first, finished.id)
    active = await running(first, runtime)
    await first.close()
    # As if the agent crashed after recording the outcome, before removing the container,
    # and while an init container of another run existed.
    runtime.removed.remove(finished.container_id)
    runtime.created.append("ja-" + "f" * 32 + "-init0")
    runtime.alive.add(active.container_id)
    await make_executor().start()
    assert set(runtime.removed) >= {finished.container_id, "ja-" + "f" * 32 + "-init0"}
    assert active.container_id not in runtime.removed


async def test_an_unreadable_job_row_hides_no_other_job_and_can_be_replaced_or_removed(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db")
    executor = Executor(store, FakeRuntime(), tmp_path / "logs")
    names = ["a-job", "b-job", "c-job", "d-job"]
    executor.register_jobs([JobSpec(name, ImageSpec("busybox")) for name in names], "", False)
    for broken in ("b-job", "c-job"):
        store._db.execute("UPDATE jobs SET spec = '{not json' WHERE name = ?", (broken,))
    seen, token = [], ""
    while True:
        page, token = executor.page_jobs(1, token)
        seen += [job.name for job in page]
        if not token:
            break
    assert seen == ["a-job", "d-job"]
    with pytest.raises(DataLoss):
        executor.get_job("b-job")
    with pytest.raises(AlreadyExists):
        executor.register_jobs([JobSpec("b-job", ImageSpec("busybox"))], "", False)
    executor.register_jobs([JobSpec("b-job", ImageSpec("busybox"))], "", True)
    assert executor.get_job("b-job").spec.image.name == "busybox"
    executor.unregister_job("c-job")
    assert [job.name for job in executor.list_jobs()] == ["a-job", "b-job", "d-job"]
    await executor.close()
    store.close()


async def test_a_lost_monitor_ends_the_run_lost_or_as_a_cancel_asked(
    executor: Executor, runtime: FakeRuntime
) -> None:
    lost = await running(executor, runtime)
    runtime.lose(lost.container_id)
    await statuses_until_terminal(executor, lost.id)
    final = executor.get_execution(lost.id)
    assert (final.status, final.failure_reason) == (Status.FAILED, FailureReason.AGENT_LOST)
    assert final.exit_code is None and "is lost" in final.message
    assert runtime.removed == [lost.container_id]

    runtime.started_event.clear()
    cancelled = await running(executor, runtime)

    async def stop_losing(
        container_id: str, grace_seconds: float, signal: str | None = None
    ) -> None:
        # conmon dies as the stop signal reaches the process.
        runtime.lose(container_id)

    runtime.stop = stop_losing  # type: ignore[method-assign]
    await executor.cancel(cancelled.id)
    final = executor.get_execution(cancelled.id)
    assert (final.status, final.message) == (Status.CANCELLED, "cancelled on request")


def executions_token(cursor: str) -> str:
    """An executions page token holding `cursor`, as a caller can craft one."""
    return base64.urlsafe_b64encode(f"e:{cursor}".encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    ["9" * 30, str(2**63), "-1", "+5", " 5", "1_000", "\u0665", "5x", ""],
)
async def test_a_page_token_the_agent_never_gave_out_is_invalid_not_internal(
    executor: Executor, runtime: FakeRuntime, cursor: str
) -> None:
    """A caller crafts an executions page token whose cursor is not a row id the agent
    wrote: one past SQLite's integer (an OverflowError in the store, once INTERNAL), a
    sign, spaces, underscores or non-ASCII digits that int() takes. Each is refused as a
    bad page_token."""
    with pytest.raises(InvalidSpec) as raised:
        executor.page_executions(ExecutionFilter(), 10, executions_token(cursor))
    assert raised.value.field == "page_token"


async def test_a_page_token_at_the_largest_row_id_is_still_a_cursor(
    executor: Executor, runtime: FakeRuntime
) -> None:
    """The cursor's bound is SQLite's own: a token at 2**63 - 1 pages as usual."""
    execution = await running(executor, runtime)
    page, token = executor.page_executions(ExecutionFilter(), 10, executions_token(str(2**63 - 1)))
    assert [e.id for e in page] == [execution.id] and token == ""
