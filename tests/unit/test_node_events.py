"""The node-wide event stream: resume without gap or duplicate, out of range, slow consumers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.domain import (
    Bookmark,
    EventKind,
    Execution,
    ExecutionEvent,
    ImageSpec,
    JobEvent,
    JobKind,
    JobSpec,
    NodeEvent,
    Trigger,
    TriggerKind,
)
from agent.errors import OutOfRange, ResourceExhausted
from agent.executor import Executor
from agent.executor import executor as executor_module
from agent.executor.events import QUIET, EventBus
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime

TRIGGER = Trigger(TriggerKind.CLI)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Executor, Store]]:
    runtime = FakeRuntime()
    runtime.pull_error = "no registry"  # every execution: pending, initializing, failed
    store = Store(tmp_path / "db")
    # 400 triggers at once: a queue longer than the default bound of pending executions.
    executor = Executor(store, runtime, tmp_path / "logs", max_pending_per_job=400)
    executor.register_jobs([JobSpec("a", ImageSpec("x")), JobSpec("b", ImageSpec("x"))], "", False)
    yield executor, store
    await executor.close()
    store.close()


async def finish(executor: Executor) -> None:
    while any(e.status.value in ("pending", "initializing") for e in executor.list_executions()):
        await asyncio.sleep(0.01)


async def take(items: AsyncIterator[NodeEvent | Bookmark], count: int) -> list[NodeEvent]:
    events: list[NodeEvent] = []
    async for item in items:
        if not isinstance(item, Bookmark):
            events.append(item)
            if len(events) == count:
                break
    return events


async def test_a_resumed_watch_sees_every_event_once_in_order(
    rig: tuple[Executor, Store],
) -> None:
    executor, store = rig
    for _ in range(400):
        await executor.trigger("a", TRIGGER)
    await finish(executor)
    first = await take(executor.watch_events(0, bookmark_seconds=5), 700)
    for _ in range(400):
        await executor.trigger("b", TRIGGER)
    await finish(executor)
    total = store.last_sequence()
    rest = await take(
        executor.watch_events(first[-1].sequence, bookmark_seconds=5), total - len(first)
    )
    sequences = [event.sequence for event in first + rest]
    assert sequences == list(range(1, total + 1))
    assert total >= 2400


async def test_quiet_comes_only_after_an_interval_without_events(
    rig: tuple[Executor, Store],
) -> None:
    _, store = rig
    bus = EventBus()
    subscription = bus.subscribe_node(100, quiet_seconds=0.1)
    event = store.node_events_after(0, 1)[0]
    # Events every 30 ms for 0.3 s, each taken at once: never 0.1 s quiet.
    for _ in range(10):
        bus.publish(event)
        assert await subscription.next() is event
        await asyncio.sleep(0.03)
    async with asyncio.timeout(1):
        assert await subscription.next() is QUIET
    bus.unsubscribe_node(subscription)


async def test_a_consumer_that_does_not_take_gets_one_quiet_queued() -> None:
    bus = EventBus()
    subscription = bus.subscribe_node(100, quiet_seconds=0.02)
    await asyncio.sleep(0.15)
    assert subscription.queue.qsize() == 1
    assert await subscription.next() is QUIET
    bus.unsubscribe_node(subscription)
    await asyncio.sleep(0.1)
    assert subscription.queue.empty()  # the timer stopped with the subscription


async def test_filters_and_live_events_after_the_backlog(rig: tuple[Executor, Store]) -> None:
    executor, _ = rig
    await executor.trigger("a", TRIGGER)
    await finish(executor)
    watch = executor.watch_events(
        0, job_name="b", kinds=frozenset({EventKind.TRANSITION}), bookmark_seconds=0.05
    )
    bookmark = await anext(watch)
    assert isinstance(bookmark, Bookmark) and bookmark.sequence == 5  # 2 registrations, 3 of a
    await executor.trigger("b", TRIGGER)
    live = [event for event in await take(watch, 3) if isinstance(event, ExecutionEvent)]
    assert {event.execution.job_name for event in live} == {"b"}
    assert [event.execution.status.value for event in live] == ["pending", "initializing", "failed"]


async def history_with_its_oldest_removed(executor: Executor, store: Store) -> Execution:
    """Two finished executions of job a, the first removed as retention does; returns it."""
    first = await executor.trigger("a", TRIGGER)
    await executor.trigger("a", TRIGGER)
    await finish(executor)
    store.delete_executions([first.id])
    return first


async def test_a_resume_point_that_retention_removed_is_out_of_range(
    rig: tuple[Executor, Store],
) -> None:
    executor, store = rig
    first = await history_with_its_oldest_removed(executor, store)
    with pytest.raises(OutOfRange):
        await anext(executor.watch_events(store.compacted_through() - 1))
    held = store.node_events_after(store.compacted_through())
    remaining = await take(executor.watch_events(store.compacted_through()), len(held))
    assert remaining == held and held
    assert all(
        event.execution.id != first.id for event in remaining if isinstance(event, ExecutionEvent)
    )


async def test_since_zero_starts_at_the_oldest_event_still_held(
    rig: tuple[Executor, Store],
) -> None:
    executor, store = rig
    first = await history_with_its_oldest_removed(executor, store)
    assert store.compacted_through() > 0
    held = store.node_events_after(0)
    everything = await take(executor.watch_events(0), len(held))
    assert everything == held
    assert [event.sequence for event in everything] == sorted(e.sequence for e in everything)
    assert not any(
        isinstance(event, ExecutionEvent) and event.execution.id == first.id for event in everything
    )


async def test_job_changes_are_events_on_the_node_stream(rig: tuple[Executor, Store]) -> None:
    executor, store = rig
    cron = JobSpec("nightly", ImageSpec("x"), kind=JobKind.CRON, schedule="0 3 * * *")
    executor.register_jobs([cron], "", False)
    executor.register_jobs([cron], "", False)  # unchanged: no event
    executor.register_jobs([replace(cron, env={"A": "1"})], "", True)
    executor.set_suspended("nightly", True)
    executor.set_suspended("nightly", False)
    executor.unregister_job("nightly")
    events = await take(executor.watch_events(0, job_name="nightly"), 5)
    assert all(isinstance(event, JobEvent) and event.job_name == "nightly" for event in events)
    assert [event.kind for event in events] == [
        EventKind.JOB_REGISTERED,
        EventKind.JOB_UPDATED,
        EventKind.JOB_SUSPENDED,
        EventKind.JOB_RESUMED,
        EventKind.JOB_UNREGISTERED,
    ]
    assert store.node_events_after(events[-2].sequence) == [events[-1]]


async def test_old_job_events_age_out_and_a_resume_below_them_is_out_of_range(
    rig: tuple[Executor, Store],
) -> None:
    executor, store = rig
    registered = await take(executor.watch_events(0), 2)
    assert store.delete_job_events(datetime.now(UTC) + timedelta(seconds=1)) == 2
    assert store.compacted_through() == registered[-1].sequence
    with pytest.raises(OutOfRange):
        await anext(executor.watch_events(registered[0].sequence))
    executor.register_jobs([JobSpec("c", ImageSpec("x"))], "", False)
    (oldest,) = await take(executor.watch_events(0), 1)
    assert isinstance(oldest, JobEvent) and oldest.job_name == "c"


async def test_a_slow_watcher_is_cut_off_not_waited_for(
    rig: tuple[Executor, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    executor, _ = rig
    monkeypatch.setattr(executor_module, "NODE_WATCH_CAPACITY", 5)
    watch = executor.watch_events(0, bookmark_seconds=5)
    waiting = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0.01)
    for _ in range(10):
        await executor.trigger("a", TRIGGER)
    await finish(executor)
    await waiting
    with pytest.raises(ResourceExhausted):
        while True:
            await anext(watch)
