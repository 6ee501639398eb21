"""The cron scheduler against a controllable clock: no test waits for a schedule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.domain import (
    ConcurrencyPolicy,
    CronPolicy,
    EventKind,
    ImageSpec,
    Job,
    JobEvent,
    JobKind,
    JobSpec,
    Status,
    TriggerKind,
)
from agent.errors import FailedPrecondition
from agent.executor import Executor
from agent.executor.scheduler import CronScheduler, latest_time, schedule_times
from agent.store import Store
from agent.supervisor import Backoff, Supervisor
from tests.unit.fake_runtime import FakeRuntime


class FakeClock:
    """A clock that moves only when the test says so, and notes each sleep asked of it."""

    def __init__(self, start: datetime) -> None:
        self.current = start
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(3600)

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@pytest.fixture
async def rig(
    tmp_path: Path,
) -> AsyncIterator[tuple[Executor, CronScheduler, FakeClock, FakeRuntime, Store]]:
    runtime = FakeRuntime()
    store = Store(tmp_path / "db")
    executor = Executor(store, runtime, tmp_path / "logs")
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))
    yield executor, CronScheduler(executor, store, clock), clock, runtime, store
    await executor.close()
    store.close()


def cron(schedule: str, **policy: object) -> JobSpec:
    return JobSpec(
        "tick",
        ImageSpec("busybox"),
        kind=JobKind.CRON,
        schedule=schedule,
        cron=CronPolicy(**policy),  # type: ignore[arg-type]
    )


def job_events(store: Store, kind: EventKind) -> list[JobEvent]:
    """The job events of one kind that the store holds."""
    return [
        event
        for event in store.node_events_after(0)
        if isinstance(event, JobEvent) and event.kind is kind
    ]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_every_second_runs_once_per_tick_with_the_scheduler_trigger(
    rig: tuple[Executor, CronScheduler, FakeClock, FakeRuntime, Store],
) -> None:
    executor, scheduler, clock, _runtime, _ = rig
    executor.register_jobs([cron("* * * * * *")], "", replace_existing=False)
    for _ in range(3):
        clock.advance(1)
        await scheduler.tick()
        await scheduler.tick()  # the same time is never handled twice
    executions = executor.list_executions("tick")
    assert len(executions) == 3
    assert {e.trigger.kind for e in executions} == {TriggerKind.SCHEDULER}
    assert all("schedule * * * * * * at" in e.trigger.reason for e in executions)


async def test_forbid_skips_while_a_run_is_active_and_replace_cancels_it(
    rig: tuple[Executor, CronScheduler, FakeClock, FakeRuntime, Store],
) -> None:
    executor, scheduler, clock, runtime, store = rig
    executor.register_jobs(
        [cron("* * * * * *", concurrency_policy=ConcurrencyPolicy.FORBID)],
        "",
        replace_existing=False,
    )
    clock.advance(1)
    await scheduler.tick()
    await asyncio.wait_for(runtime.started_event.wait(), 5)
    clock.advance(1)
    await scheduler.tick()
    assert len(executor.list_executions("tick")) == 1
    assert store.get_cron_state("tick").skipped == 1
    [skip] = job_events(store, EventKind.SCHEDULE_SKIPPED)
    assert skip.job_name == "tick" and skip.schedule_time == clock.now()
    assert "still active" in skip.message

    executor.register_jobs(
        [cron("* * * * * *", concurrency_policy=ConcurrencyPolicy.REPLACE)],
        "",
        replace_existing=True,
    )
    clock.advance(1)
    await scheduler.tick()
    await settle()
    statuses = sorted(e.status.value for e in executor.list_executions("tick"))
    assert statuses[0] == "cancelled" and len(statuses) == 2


async def test_a_run_past_its_starting_deadline_is_missed_not_late(
    rig: tuple[Executor, CronScheduler, FakeClock, FakeRuntime, Store],
) -> None:
    executor, scheduler, clock, _, store = rig
    executor.register_jobs([cron("* * * * *", starting_deadline_seconds=5)], "", False)
    # The scheduler counts from the job's registration (the real time), and a minute may
    # begin between it and the fake clock's start.
    job = executor.get_job("tick")
    due = next(schedule_times(job, job.updated_at))
    clock.current = due + timedelta(seconds=30)
    await scheduler.tick()
    assert executor.list_executions("tick") == []
    assert store.get_cron_state("tick").missed == 1
    [miss] = job_events(store, EventKind.SCHEDULE_MISSED)
    assert miss.schedule_time == due and "starting deadline of 5s" in miss.message


async def test_after_downtime_at_most_one_catch_up_run(
    rig: tuple[Executor, CronScheduler, FakeClock, FakeRuntime, Store],
) -> None:
    executor, scheduler, clock, _, store = rig
    executor.register_jobs([cron("* * * * * *")], "", False)
    clock.advance(3600)
    await scheduler.tick()
    assert len(executor.list_executions("tick")) == 1
    assert store.get_cron_state("tick").missed >= 100
    [miss] = job_events(store, EventKind.SCHEDULE_MISSED)
    assert miss.message.startswith("more than 100 schedule times passed without a run")
    assert miss.schedule_time == clock.now() - timedelta(seconds=1)


async def test_a_short_downtime_reports_how_many_times_it_missed(
    rig: tuple[Executor, CronScheduler, FakeClock, FakeRuntime, Store],
) -> None:
    executor, scheduler, clock, _, store = rig
    executor.register_jobs([cron("* * * * * *")], "", False)
    clock.advance(4)
    await scheduler.tick()
    assert len(executor.list_executions("tick")) == 1
    missed = store.get_cron_state("tick").missed
    assert missed in (3, 4)  # registration is up to a second before the clock's start
    [miss] = job_events(store, EventKind.SCHEDULE_MISSED)
    assert miss.message.startswith(f"{missed} schedule times passed without a run")


async def test_suspended_jobs_do_not_run_and_have_no_next_time(
    rig: tuple[Executor, CronScheduler, FakeClock, FakeRuntime, Store],
) -> None:
    executor, scheduler, clock, _, _ = rig
    executor.register_jobs([cron("* * * * * *", suspend=True)], "", False)
    clock.advance(5)
    await scheduler.tick()
    assert executor.list_executions("tick") == []
    assert scheduler.next_run(executor.get_job("tick")) is None


async def test_history_limits_keep_the_newest_runs(
    rig: tuple[Executor, CronScheduler, FakeClock, FakeRuntime, Store],
) -> None:
    executor, scheduler, clock, runtime, _ = rig
    executor.register_jobs(
        [cron("* * * * * *", successful_history_limit=2, failed_history_limit=1)], "", False
    )
    for code in (0, 0, 0, 1, 1):
        clock.advance(1)
        await scheduler.tick()
        newest = executor.list_executions("tick")[0]
        await asyncio.wait_for(_started(runtime, newest.container_id), 5)
        runtime.exit(newest.container_id, code)
        async for _ in executor.watch(newest.id):
            pass
    await scheduler.tick()
    kept = [e.status for e in executor.list_executions("tick")]
    assert sorted(s.value for s in kept) == ["completed", "completed", "failed"]


async def _started(runtime: FakeRuntime, container_id: str) -> None:
    while container_id not in runtime.started:
        await asyncio.sleep(0.005)


def test_time_zones_follow_daylight_saving() -> None:
    spec = JobSpec(
        "report",
        ImageSpec("busybox"),
        kind=JobKind.CRON,
        schedule="0 9 * * *",
        cron=CronPolicy(time_zone="Europe/Berlin"),
    )
    job = Job(spec, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
    before = next(schedule_times(job, datetime(2026, 3, 27, 12, tzinfo=UTC)))
    after = next(schedule_times(job, before))
    assert (before.hour, after.hour) == (8, 7)  # 09:00 CET, then 09:00 CEST
    assert latest_time(job, after) == after


async def test_a_failed_trigger_is_a_failed_execution_not_a_retry_every_second(
    rig: tuple[Executor, CronScheduler, FakeClock, FakeRuntime, Store],
) -> None:
    executor, scheduler, clock, runtime, _ = rig
    runtime.pull_error = "registry down"
    executor.register_jobs([cron("* * * * *")], "", False)
    due = next(schedule_times(executor.get_job("tick"), clock.now()))
    clock.current = due
    for _ in range(3):
        await scheduler.tick()
        await settle()
    (execution,) = executor.list_executions("tick")
    assert execution.status is Status.FAILED


async def test_suspend_and_resume_through_the_executor(
    rig: tuple[Executor, CronScheduler, FakeClock, FakeRuntime, Store],
) -> None:
    executor, scheduler, clock, _, _ = rig
    executor.register_jobs([cron("* * * * * *")], "", False)
    assert executor.set_suspended("tick", True).spec.cron.suspend
    clock.advance(3)
    await scheduler.tick()
    assert executor.list_executions("tick") == []
    executor.set_suspended("tick", False)
    clock.advance(3)
    await scheduler.tick()
    assert len(executor.list_executions("tick")) == 1
    executor.register_jobs([JobSpec("plain", ImageSpec("busybox"))], "", False)
    with pytest.raises(FailedPrecondition):
        executor.set_suspended("plain", True)


async def test_registrations_and_schedule_state_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1))
    store = Store(tmp_path / "db")
    executor = Executor(store, FakeRuntime(), tmp_path / "logs")
    executor.register_jobs(
        [
            cron("* * * * * *", concurrency_policy=ConcurrencyPolicy.FORBID),
            replace(cron("@daily"), name="paused"),
        ],
        "",
        False,
    )
    executor.set_suspended("paused", True)
    clock.advance(1)
    await CronScheduler(executor, store, clock).tick()
    handled = store.get_cron_state("tick")
    await executor.close()
    store.close()

    store = Store(tmp_path / "db")
    executor = Executor(store, FakeRuntime(), tmp_path / "logs")
    await executor.start()
    scheduler = CronScheduler(executor, store, clock)
    try:
        assert {job.name for job in executor.list_jobs()} == {"tick", "paused"}
        assert executor.get_job("paused").spec.cron.suspend
        assert executor.get_job("tick").spec.cron.concurrency_policy is ConcurrencyPolicy.FORBID
        assert store.get_cron_state("tick") == handled
        await scheduler.tick()  # the time handled before the restart is not run again
        assert len(executor.list_executions("tick")) == 1
        clock.advance(1)
        await scheduler.tick()
        assert store.get_cron_state("tick").last_schedule_time == clock.now()
        assert executor.list_executions("paused") == []
    finally:
        await executor.close()
        store.close()


@pytest.mark.parametrize(
    ("schedule", "zone"),
    [("* * * * * *", "No/Such"), ("every tuesday", "UTC"), ("0 0 31 2 *", "UTC")],
)
async def test_a_stored_job_that_cannot_be_scheduled_is_marked_and_the_others_fire(
    rig: tuple[Executor, CronScheduler, FakeClock, FakeRuntime, Store], schedule: str, zone: str
) -> None:
    executor, scheduler, clock, _runtime, store = rig
    executor.register_jobs([cron("* * * * * *")], "", False)
    # Stored as an older agent stored it, past every validator.
    broken = replace(cron(schedule, time_zone=zone), name="broken")
    at = datetime.now(UTC)
    store.put_job(Job(spec=broken, created_at=at, updated_at=at))
    for _ in range(3):
        clock.advance(1)
        await scheduler.tick()
        scheduler.next_run(store.get_job("broken"))
    await settle()
    assert {e.job_name for e in executor.list_executions()} == {"tick"}
    assert len(executor.list_executions("tick")) == 3
    assert scheduler.next_run(store.get_job("broken")) is None
    assert scheduler.next_run(store.get_job("tick")) is not None
    (marked,) = [e for e in job_events(store, EventKind.SCHEDULE_MISSED) if e.job_name == "broken"]
    assert "cannot be scheduled" in marked.message
    fixed = replace(broken, schedule="* * * * * *", cron=CronPolicy())
    executor.register_jobs([fixed], "", True)
    clock.advance(1)
    await scheduler.tick()
    await settle()
    assert executor.list_executions("broken")


async def test_a_failed_tick_ends_run_forever_and_its_supervisor_starts_it_again(
    rig: tuple[Executor, CronScheduler, FakeClock, FakeRuntime, Store],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    executor, scheduler, clock, _runtime, store = rig
    executor.register_jobs([cron("* * * * * *")], "", replace_existing=True)
    failures: list[int] = []
    real_list_jobs = store.list_jobs

    def failing_twice(*args: object, **kwargs: object) -> list[Job]:
        if len(failures) < 2:
            failures.append(1)
            raise RuntimeError("disk on fire")
        return real_list_jobs()

    monkeypatch.setattr(store, "list_jobs", failing_twice)
    with pytest.raises(RuntimeError, match="disk on fire"):
        await scheduler.run_forever()
    health: list[bool] = []

    async def report(healthy: bool) -> None:
        health.append(healthy)

    supervisor = Supervisor(Backoff(initial=0.01, maximum=0.05), on_health=report)
    supervisor.start("scheduler", scheduler.run_forever, core=True)
    clock.advance(1)
    for _ in range(100):
        if executor.list_executions("tick") and health == [False, True]:
            break
        await asyncio.sleep(0.01)
    await supervisor.stop()
    assert supervisor.restarts("scheduler") == 1
    assert health == [False, True]
    assert executor.list_executions("tick")
