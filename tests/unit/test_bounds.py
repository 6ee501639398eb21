"""Bounds on what callers may hold: open streams, pending executions."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from agent.api.limits import ApiLimits, StreamSlots
from agent.domain import EventKind, ImageSpec, JobEvent, JobKind, JobSpec, Trigger, TriggerKind
from agent.errors import ResourceExhausted
from agent.executor import Executor
from agent.executor.scheduler import CronScheduler
from agent.spec import parse_document, service_documents
from tests.unit.fake_runtime import FakeRuntime

TRIGGER = Trigger(TriggerKind.CLI)


def test_streams_are_bounded_per_caller_and_per_node() -> None:
    slots = StreamSlots(ApiLimits(streams=3, streams_per_caller=2))
    first, second = slots.take("token:a", "WatchEvents"), slots.take("token:a", "StreamLogs")
    with pytest.raises(ResourceExhausted, match="max-streams-per-caller"):
        slots.take("token:a", "WatchEvents")
    third = slots.take("token:b", "WatchEvents")
    with pytest.raises(ResourceExhausted, match=r"max-streams\)"):
        slots.take("token:c", "WatchEvents")
    third.release()
    third.release()  # a second release (the call's end after the handler's) is a no-op
    assert slots.open == 2 and slots.open_by("token:b") == 0
    with first:
        pass
    assert slots.open_by("token:a") == 1
    slots.take("token:a", "DownloadLogs")
    second.release()
    assert slots.open == 1


async def test_pending_executions_are_bounded_per_job_and_per_node(
    make_executor: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    runtime.pull_gate = asyncio.Event()  # the first execution holds the only slot
    executor = make_executor(
        JobSpec("a", ImageSpec("x")),
        JobSpec("b", ImageSpec("x")),
        node_limit=1,
        max_pending=3,
        max_pending_per_job=2,
    )
    await executor.trigger("a", TRIGGER)
    waiting = [await executor.trigger("a", TRIGGER) for _ in range(2)]
    with pytest.raises(ResourceExhausted, match=r"job 'a' has 2 .*max-pending-per-job"):
        await executor.trigger("a", TRIGGER)
    await executor.trigger("b", TRIGGER)
    with pytest.raises(ResourceExhausted, match=r"node has 3 .*\(--max-pending\)"):
        await executor.trigger("b", TRIGGER)
    assert len(executor.list_executions()) == 4  # the refused ones left no record
    await executor.cancel(waiting[0].id)
    await executor.trigger("a", TRIGGER)  # room again


async def test_a_cron_run_past_the_pending_bound_is_skipped_with_a_message(
    make_executor: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    runtime.pull_gate = asyncio.Event()
    tick = JobSpec("tick", ImageSpec("x"), kind=JobKind.CRON, schedule="* * * * * *")
    executor = make_executor(tick, node_limit=1, max_pending_per_job=1)
    store = executor._store
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    clock = _Clock(start)
    scheduler = CronScheduler(executor, store, clock)
    for _ in range(3):
        clock.current += timedelta(seconds=1)
        await scheduler.tick()
    assert len(executor.list_executions("tick")) == 2  # one running, one pending
    assert store.get_cron_state("tick").skipped == 1
    events = store.node_events_after(0)
    [skip] = [e for e in events if isinstance(e, JobEvent) and e.kind is EventKind.SCHEDULE_SKIPPED]
    assert "was skipped" in skip.message and "max-pending-per-job" in skip.message


class _Clock:
    def __init__(self, start: datetime) -> None:
        self.current = start

    def now(self) -> datetime:
        return self.current

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(3600)


def test_a_deployments_document_is_stored_once_in_all_not_once_per_service(
    make_executor: Callable[..., Executor],
) -> None:
    services = "".join(
        f"  job-{i}:\n    rtype: job\n    image: {{name: busybox}}\n"
        f"    env: {{PAD: {'x' * 1024}}}\n"
        for i in range(50)
    )
    text = "version: v1\ndeployment: big\n# services below\nservices:\n" + services
    executor = make_executor()
    specs = parse_document(text)
    executor.register_jobs(specs, service_documents(text), replace_existing=False)
    stored = [executor.get_job(spec.name).spec_yaml for spec in specs]
    assert sum(map(len, stored)) < 2 * len(text)
    # Each job's part is a document of its own that declares exactly that job.
    for spec, part in zip(specs, stored, strict=True):
        assert parse_document(part) == [spec]


def test_a_document_of_one_service_is_kept_as_written() -> None:
    text = (
        "version: v1  # the seed's\ndeployment: one\nservices:\n"
        "  only: {rtype: job, image: {name: busybox}}\n"
    )
    assert service_documents(text) == {"only": text}
