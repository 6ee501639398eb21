"""The cron scheduler and a stalled store: a schedule time the stall meets is run once the
store writes again (and within a second, not at the next schedule time), never twice; a
replace policy stops nothing for a run it cannot record. Real SQLite files, held by a
write transaction of the test's (tests/unit/test_store_stall.py)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent import store as store_module
from agent.domain import (
    ConcurrencyPolicy,
    CronPolicy,
    EventKind,
    Execution,
    ExecutionEvent,
    ImageSpec,
    JobKind,
    JobSpec,
    Status,
    Trigger,
    TriggerKind,
)
from agent.errors import StoreStalled
from agent.executor import Executor
from agent.executor.scheduler import CronScheduler, schedule_times
from agent.store import STALL_RETRY_SECONDS, Store
from tests.unit.fake_runtime import FakeRuntime
from tests.unit.test_disk_full import until
from tests.unit.test_scheduler import FakeClock
from tests.unit.test_store_stall import held_write


@dataclass
class Cron:
    """An executor and its store, with one cron job registered."""

    executor: Executor
    store: Store
    database: Path
    due: datetime  # the job's first schedule time

    def scheduler(self, at: datetime | None = None) -> tuple[CronScheduler, FakeClock]:
        clock = FakeClock(at or self.due)
        return CronScheduler(self.executor, self.store, clock), clock

    def runs(self) -> list[Execution]:
        return self.executor.list_executions("tick")


@pytest.fixture
async def cron(
    tmp_path: Path, runtime: FakeRuntime, short_stall: float
) -> AsyncIterator[Callable[..., Cron]]:
    """Makes the rig for a cron job `tick` of the given schedule and concurrency policy."""
    made: list[Cron] = []

    def make(
        schedule: str = "* * * * * *",
        policy: ConcurrencyPolicy = ConcurrencyPolicy.ALLOW,
        **options: Any,
    ) -> Cron:
        """`options` go to the Executor."""
        database = tmp_path / "agent.db"
        store = Store(database)
        executor = Executor(store, runtime, tmp_path / "logs", **options)
        spec = JobSpec(
            "tick",
            ImageSpec("busybox"),
            kind=JobKind.CRON,
            schedule=schedule,
            cron=CronPolicy(concurrency_policy=policy),
        )
        executor.register_jobs([spec], "", replace_existing=False)
        job = executor.get_job("tick")
        made.append(Cron(executor, store, database, next(schedule_times(job, job.updated_at))))
        return made[-1]

    yield make
    for rig in made:
        await rig.executor.close()
        rig.store.close()


async def test_a_cron_time_the_stall_meets_is_handled_once_the_store_writes(
    cron: Callable[..., Cron],
) -> None:
    rig = cron()
    scheduler, _ = rig.scheduler()
    with held_write(rig.database):
        await scheduler.tick()
        assert rig.store.stalled
        await scheduler.tick()
    assert rig.runs() == []
    assert rig.store.get_cron_state("tick").last_schedule_time is None
    await scheduler.tick()
    [run] = rig.runs()
    state = rig.store.get_cron_state("tick")
    assert (state.last_schedule_time, state.last_execution_id, state.missed) == (rig.due, run.id, 0)


async def test_a_daily_time_the_stall_meets_is_tried_again_within_a_second(
    cron: Callable[..., Cron],
) -> None:
    rig = cron("0 2 * * *")
    scheduler, clock = rig.scheduler(at=rig.due + timedelta(seconds=1))
    with held_write(rig.database):
        running = asyncio.create_task(scheduler.run_forever())
        await until(lambda: bool(clock.sleeps), 10)
    try:
        # Not the next schedule time, a day later.
        assert clock.sleeps == [STALL_RETRY_SECONDS]
        assert rig.runs() == []
    finally:
        running.cancel()
    await scheduler.tick()
    assert len(rig.runs()) == 1


async def test_a_stall_right_after_the_run_is_recorded_never_runs_a_time_twice(
    cron: Callable[..., Cron], monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = cron()
    other = sqlite3.connect(rig.database, isolation_level=None, timeout=5)
    recorded = rig.store.insert_execution

    def then_another_process_writes(*args: Any, **kwargs: Any) -> Any:
        event = recorded(*args, **kwargs)
        if not other.in_transaction:
            other.execute("BEGIN IMMEDIATE")
        return event

    monkeypatch.setattr(rig.store, "insert_execution", then_another_process_writes)
    scheduler, _ = rig.scheduler()
    try:
        await scheduler.tick()
        other.execute("ROLLBACK")
        monkeypatch.setattr(rig.store, "insert_execution", recorded)
        await scheduler.tick()
    finally:
        other.close()
    [run] = rig.runs()
    assert rig.store.get_cron_state("tick").last_execution_id == run.id


async def test_replace_stops_nothing_for_a_run_the_stall_keeps_from_being_recorded(
    cron: Callable[..., Cron], runtime: FakeRuntime
) -> None:
    rig = cron("0 2 * * *", ConcurrencyPolicy.REPLACE)
    await rig.executor.start()
    earlier = await rig.executor.trigger("tick", Trigger(TriggerKind.SCHEDULER, reason="earlier"))
    await until(lambda: rig.executor.get_execution(earlier.id).status is Status.RUNNING)
    scheduler, _ = rig.scheduler()
    with held_write(rig.database):
        await scheduler.tick()
        await asyncio.sleep(0.2)
    assert runtime.stopped == []
    assert rig.executor.get_execution(earlier.id).status is Status.RUNNING
    # Once the store writes, the time is handled as the policy says: the earlier run is
    # stopped before the new one starts.
    await scheduler.tick()
    [new] = [run for run in rig.runs() if run.id != earlier.id]
    await until(lambda: new.container_id in runtime.started)
    assert sequence_of(rig, earlier.id, Status.CANCELLED) < sequence_of(
        rig, new.id, Status.INITIALIZING
    )


def sequence_of(rig: Cron, execution_id: str, status: Status) -> int:
    """The sequence number of the execution's transition to `status`."""
    return next(
        event.sequence
        for event in rig.store.node_events_after(0)
        if isinstance(event, ExecutionEvent)
        and event.execution.id == execution_id
        and event.kind is EventKind.TRANSITION
        and event.execution.status is status
    )


async def test_replace_makes_room_in_a_full_queue_of_its_own(cron: Callable[..., Cron]) -> None:
    rig = cron("0 2 * * *", ConcurrencyPolicy.REPLACE, node_limit=1, max_pending_per_job=1)
    await rig.executor.start()
    earlier = [
        await rig.executor.trigger("tick", Trigger(TriggerKind.SCHEDULER, reason="earlier"))
        for _ in range(2)
    ]
    await until(lambda: rig.executor.get_execution(earlier[0].id).status is Status.RUNNING)
    scheduler, _ = rig.scheduler()
    await scheduler.tick()
    assert rig.store.get_cron_state("tick").skipped == 0
    [new] = [run for run in rig.runs() if run.id not in {e.id for e in earlier}]
    await until(lambda: rig.executor.get_execution(new.id).status is Status.RUNNING)
    # The earlier ones were cancelled (and the history limit may have removed them).
    assert [run.id for run in rig.runs() if not run.status.terminal] == [new.id]


async def test_a_cron_run_whose_trigger_met_a_stall_is_recorded_as_missed(
    cron: Callable[..., Cron], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trigger's write waited in vain, and the stall ended before the note's."""
    rig = cron()

    async def stalled(*_: object, **__: object) -> Execution:
        raise StoreStalled(store_module.STALLED)

    monkeypatch.setattr(rig.executor, "trigger", stalled)
    scheduler, _ = rig.scheduler()
    await scheduler.tick()
    state = rig.store.get_cron_state("tick")
    assert (state.last_schedule_time, state.missed) == (rig.due, 1)
    events = rig.store.node_events_after(0)
    [miss] = [e for e in events if e.kind is EventKind.SCHEDULE_MISSED]
    assert miss.message == f"the run of {rig.due.isoformat()} was missed: {store_module.STALLED}"
