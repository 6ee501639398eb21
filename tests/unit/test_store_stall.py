"""A stalled store: a write that waits STALL_SECONDS in vain for the database fails with
StoreStalled, every write after it fails at once until one goes through, reads go on, and
an execution's end is kept until it can be written. Real SQLite files; the stall is the
checkpointer's write held in its COMMIT (where a hung disk holds it, syncing the log's
header) or another process's write transaction."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from agent import store as store_module
from agent.api.errors import to_status
from agent.domain import (
    Execution,
    ExecutionEvent,
    FailureReason,
    NodeEvent,
    RetryPolicy,
    Status,
)
from agent.errors import DiskFull, NotFound, StoreStalled, StoreUnwritable, Unavailable
from agent.executor import Executor
from agent.executor.lifecycle import container_id_of
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime
from tests.unit.test_disk_full import SPEC, TRIGGER, TightDisk, until
from tests.unit.test_store import make_execution
from tests.unit.test_wal_checkpoint import HeldConnection, rows


@contextmanager
def held_write(database: Path) -> Iterator[sqlite3.Connection]:
    """Another process's view: a write transaction on the database, open until the end of
    the block."""
    # Its own wait: the agent's writes are short.
    other = sqlite3.connect(database, isolation_level=None, timeout=5, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
        other.execute("ROLLBACK")
    finally:
        other.close()


def timed(write: Callable[[], object]) -> float:
    """Seconds `write` took to fail with StoreStalled."""
    began = time.monotonic()
    with pytest.raises(StoreStalled):
        write()
    return time.monotonic() - began


def store_of_one(tmp_path: Path) -> tuple[Store, Path, Execution]:
    """A store holding one execution; its database; that execution."""
    database = tmp_path / "agent.db"
    store = Store(database)
    store.insert_execution(first := make_execution("1" * 32))
    return store, database, first


def write_beside_a_short_transaction(store: Store, database: Path, seconds: float) -> None:
    """A write of the store's while another connection holds a write transaction for
    `seconds`: it must wait, not fail."""
    other = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(seconds, other.execute, ("COMMIT",)).start()
    store.insert_execution(make_execution("5" * 32))
    other.close()


def test_a_hung_checkpoint_write_stalls_writes_once_then_refuses_them_at_once(
    tmp_path: Path, short_stall: float
) -> None:
    store, database, first = store_of_one(tmp_path)
    held = HeldConnection(store._checkpointer._db, at="COMMIT")
    store._checkpointer._db = held  # type: ignore[assignment]
    running = threading.Thread(target=store.checkpoint)
    running.start()
    try:
        assert held.entered.wait(10)
        # The checkpointer holds the write lock and SQLite's, as in a sync that never ends.
        waited = timed(lambda: store.insert_execution(make_execution("2" * 32)))
        assert waited >= short_stall * 0.9
        # The next ones do not wait again; reads go on.
        assert timed(lambda: store.insert_execution(make_execution("3" * 32))) < short_stall / 2
        assert timed(lambda: store.transition(Status.PENDING, first)) < short_stall / 2
        assert store.get_execution(first.id).status is Status.PENDING
        assert [e.id for e in store.list_executions()] == [first.id]
    finally:
        held.release.set()
        running.join(10)
    # Once the disk answers, writes go through and wait again when they must.
    store.insert_execution(make_execution("4" * 32))
    with held_write(database):
        assert timed(lambda: store.insert_execution(make_execution("5" * 32))) >= short_stall * 0.9
    store.insert_execution(make_execution("6" * 32))
    store.close()
    assert rows(database) == 3


def test_another_process_holding_the_database_stalls_writes_not_reads(
    tmp_path: Path, short_stall: float
) -> None:
    store, database, first = store_of_one(tmp_path)
    with held_write(database):
        assert timed(lambda: store.insert_execution(make_execution("2" * 32))) >= short_stall * 0.9
        assert timed(lambda: store.insert_execution(make_execution("3" * 32))) < short_stall / 2
        assert store.get_execution(first.id).id == first.id
    store.insert_execution(make_execution("4" * 32))
    # Writing again, a write waits for a transaction that ends within the limit.
    write_beside_a_short_transaction(store, database, short_stall / 4)
    store.close()
    assert rows(database) == 3


def test_a_stall_is_unavailable_to_callers_and_names_its_causes() -> None:
    error = StoreStalled(store_module.STALLED)
    assert isinstance(error, Unavailable) and isinstance(error, StoreUnwritable)
    status = to_status(error)
    assert status.code is grpc.StatusCode.UNAVAILABLE
    assert status.details == (
        "the store cannot write now: a write waited 2 s for its database (a disk that does "
        "not finish a write, or another process holding a write transaction open); until a "
        "write goes through, writes are refused without waiting"
    )
    assert b"STORE_STALLED" in status.trailing_metadata[0][1]


@pytest.fixture
async def rig(
    tmp_path: Path, runtime: FakeRuntime, short_stall: float
) -> AsyncIterator[tuple[Executor, Store, Path]]:
    """An executor of two slots over a real store, its disk watched; and the database."""
    database = tmp_path / "agent.db"
    store = Store(database)
    executor = Executor(store, runtime, tmp_path / "logs", node_limit=2, disk=TightDisk(tmp_path))
    executor.register_jobs([SPEC], "", replace_existing=False)
    await executor.start()
    watching = asyncio.create_task(executor.watch_disk_forever())
    yield executor, store, database
    watching.cancel()
    await executor.close()
    store.close()


async def ends_completed(execution: Execution, store: Store, runtime: FakeRuntime) -> None:
    """Waits for the execution's container to start, ends it, and waits for its end to be
    stored."""
    await until(lambda: execution.container_id in runtime.started, 10)
    runtime.exit(execution.container_id, 0)
    await until(lambda: store.get_execution(execution.id).status is Status.COMPLETED)


async def test_a_stall_keeps_ends_fails_only_the_start_it_meets_and_holds_the_queue(
    rig: tuple[Executor, Store, Path], runtime: FakeRuntime
) -> None:
    executor, store, database = rig
    running = await executor.trigger("filler", TRIGGER)
    await until(lambda: executor.get_execution(running.id).status is Status.RUNNING)
    runtime.start_gate = asyncio.Event()
    starting = await executor.trigger("filler", TRIGGER)
    await until(lambda: starting.container_id in runtime.created)
    queued = [await executor.trigger("filler", TRIGGER) for _ in range(3)]
    with held_write(database):
        # RUNNING cannot be written: that run ends, its container removed.
        runtime.start_gate.set()
        await until(lambda: executor.get_execution(starting.id).status.terminal)
        # The other's end, meanwhile, is kept as it is.
        runtime.exit(running.container_id, 0)
        await until(lambda: executor.get_execution(running.id).status.terminal)
        with pytest.raises(StoreStalled):
            await executor.trigger("filler", TRIGGER)
        assert store.get_execution(running.id).status is Status.RUNNING
        assert store.get_execution(starting.id).status is Status.INITIALIZING
        # Two slots are free, and the queue waits for the store rather than fail there.
        await asyncio.sleep(0.3)
        assert executor.load()[:2] == (0, 3)
        assert {executor.get_execution(e.id).status for e in queued} == {Status.PENDING}
    failed = executor.get_execution(starting.id)
    assert (failed.status, failed.failure_reason) == (Status.FAILED, FailureReason.AGENT_ERROR)
    assert failed.message.startswith("the store cannot write now: ")
    assert starting.container_id in runtime.removed
    # Once the store writes, the disk watch writes both ends and starts the queue.
    await until(lambda: store.get_execution(running.id).status is Status.COMPLETED, 10)
    await until(lambda: store.get_execution(starting.id).status is Status.FAILED, 10)
    assert store.get_execution(starting.id).message == failed.message
    for execution in queued:
        await ends_completed(execution, store, runtime)
    assert not store.stalled


async def test_an_idle_store_is_seen_writing_again_by_the_disk_watch(
    rig: tuple[Executor, Store, Path],
) -> None:
    _, store, database = rig
    with held_write(database), pytest.raises(StoreStalled):
        store.insert_execution(make_execution())
    assert store.stalled
    await until(lambda: not store.stalled, 5)


def test_a_write_that_reached_the_database_ends_the_stall_whatever_its_body_did(
    tmp_path: Path, short_stall: float
) -> None:
    database = tmp_path / "agent.db"
    store = Store(database)
    with held_write(database), pytest.raises(StoreStalled):
        store.insert_execution(make_execution())
    assert store.stalled
    with pytest.raises(NotFound):
        store.delete_job("nobody")
    assert not store.stalled
    # And it waits again for a transaction that ends within the limit.
    write_beside_a_short_transaction(store, database, short_stall / 4)
    store.close()


def test_a_deployment_is_registered_whole_or_not_at_all(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    store = Store(tmp_path / "agent.db")
    executor = Executor(store, runtime, tmp_path / "logs")
    db: sqlite3.Connection = store._db
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0] + 2}")
    small = replace(SPEC, name="small")
    big = replace(SPEC, name="big", env={"X": "x" * 100_000})
    with pytest.raises(DiskFull):
        executor.register_jobs([small, big], "", replace_existing=False)
    assert store.list_jobs() == []
    assert store.node_events_after(0) == []
    store.close()


async def test_retention_skips_its_pass_while_the_store_is_stalled(
    rig: tuple[Executor, Store, Path], caplog: pytest.LogCaptureFixture
) -> None:
    executor, _, database = rig
    executor.retention.policy = replace(executor.retention.policy, interval_seconds=0.05)
    with held_write(database):
        retaining = asyncio.create_task(executor.retain_forever())
        await until(lambda: "retention skipped a pass: the store cannot write now" in caplog.text)
        await asyncio.sleep(0.2)
        assert not retaining.done()
    retaining.cancel()


@pytest.mark.parametrize("first_write", ["register", "unregister"])
async def test_the_queue_starts_whichever_write_ends_the_stall(
    rig: tuple[Executor, Store, Path], runtime: FakeRuntime, first_write: str
) -> None:
    executor, store, database = rig
    executor.register_jobs([replace(SPEC, name="other")], "", replace_existing=False)
    running = [await executor.trigger("filler", TRIGGER) for _ in range(2)]
    await until(lambda: set(runtime.started) == {e.container_id for e in running})
    queued = await executor.trigger("filler", TRIGGER)
    with held_write(database):
        runtime.exit(running[0].container_id, 0)
        await until(lambda: executor.get_execution(running[0].id).status.terminal)
        assert store.stalled
    # An RPC's write comes before the disk watch's next pass, and ends the stall.
    if first_write == "register":
        executor.register_jobs([replace(SPEC, name="third")], "", replace_existing=False)
    else:
        executor.unregister_job("other")
    assert not store.stalled
    await ends_completed(queued, store, runtime)


async def test_a_retry_the_stall_keeps_from_being_recorded_ends_the_run_with_its_attempt(
    rig: tuple[Executor, Store, Path], runtime: FakeRuntime
) -> None:
    executor, store, database = rig
    retried = replace(SPEC, name="retried", retry=RetryPolicy(backoff_limit=2))
    executor.register_jobs([retried], "", replace_existing=False)
    execution = await executor.trigger("retried", TRIGGER)
    await until(lambda: execution.container_id in runtime.started)
    with held_write(database):
        runtime.exit(execution.container_id, 3)
        await until(lambda: executor.get_execution(execution.id).status.terminal)
    await until(lambda: store.get_execution(execution.id).status is Status.FAILED)
    ended = store.get_execution(execution.id)
    assert (ended.failure_reason, ended.exit_code) == (FailureReason.EXIT_CODE, 3)
    assert ended.message.startswith("the process exited with code 3; not retried: the store ")
    [attempt] = store.list_attempts(execution.id)
    assert (attempt.exit_code, attempt.finished_at is not None) == (3, True)
    assert runtime.started == [execution.container_id]


async def test_an_execution_whose_recovery_the_stall_fails_leaves_nothing_running(
    tmp_path: Path, runtime: FakeRuntime, short_stall: float
) -> None:
    """Its process started while the agent was down: RUNNING is written at the start."""
    database = tmp_path / "agent.db"
    store = Store(database)
    executor = Executor(store, runtime, tmp_path / "logs", disk=TightDisk(tmp_path))
    executor.register_jobs([SPEC], "", replace_existing=False)
    execution = replace(make_execution(), job_name=SPEC.name)
    store.insert_execution(execution)
    store.transition(Status.PENDING, replace(execution, status=Status.INITIALIZING))
    runtime.created.append(execution.container_id)
    runtime.started.append(execution.container_id)
    runtime.alive.add(execution.container_id)
    try:
        with held_write(database):
            await executor.start()
        shown = executor.get_execution(execution.id)
        assert (shown.status, shown.failure_reason) == (Status.FAILED, FailureReason.AGENT_ERROR)
        assert execution.container_id in runtime.removed
    finally:
        await executor.close()
        store.close()


async def test_a_start_that_meets_the_stall_waits_for_the_store_and_then_runs(
    rig: tuple[Executor, Store, Path], runtime: FakeRuntime
) -> None:
    executor, store, database = rig
    running = [await executor.trigger("filler", TRIGGER) for _ in range(2)]
    await until(lambda: set(runtime.started) == {e.container_id for e in running})
    queued = [await executor.trigger("filler", TRIGGER) for _ in range(2)]
    other = sqlite3.connect(database, isolation_level=None, timeout=5)

    def hold_once_the_end_is_recorded(event: NodeEvent) -> None:
        # Another process takes the database as the slot frees: the first write to meet it
        # is the next execution's start.
        if not isinstance(event, ExecutionEvent) or event.execution.id != running[0].id:
            return
        if event.execution.status.terminal and not other.in_transaction:
            other.execute("BEGIN IMMEDIATE")

    executor.add_event_listener(hold_once_the_end_is_recorded)
    try:
        runtime.exit(running[0].container_id, 0)
        await until(lambda: store.stalled, 10)
        await asyncio.sleep(1.5)  # more than one try of its start
        assert [executor.get_execution(e.id).status for e in queued] == [Status.PENDING] * 2
        assert executor.load()[:2] == (2, 1)
        assert store.list_attempts(queued[0].id) == []
    finally:
        other.execute("ROLLBACK")
        other.close()
    await ends_completed(queued[0], store, runtime)
    assert store.get_execution(queued[0].id).attempt == 1
    runtime.exit(running[1].container_id, 0)
    await ends_completed(queued[1], store, runtime)


async def test_a_retry_that_started_while_the_agent_was_down_goes_with_a_failed_recovery(
    tmp_path: Path, runtime: FakeRuntime, short_stall: float
) -> None:
    """Attempt 2's process started, its start unrecorded, when the agent went down; at the
    next start the stall keeps the recovery from recording it."""
    database = tmp_path / "agent.db"
    store = Store(database)
    first = Executor(store, runtime, tmp_path / "logs")
    policy = RetryPolicy(backoff_limit=2, initial_delay_seconds=0.01, max_delay_seconds=0.01)
    first.register_jobs([replace(SPEC, retry=policy)], "", replace_existing=False)
    execution = await first.trigger("filler", TRIGGER)
    retry = container_id_of(execution.id, 2)
    await until(lambda: execution.container_id in runtime.started)
    gate = runtime.start_gate = asyncio.Event()
    runtime.exit(execution.container_id, 1)
    await until(lambda: retry in runtime.created)
    closing = asyncio.ensure_future(first.close())
    await asyncio.sleep(0.05)
    gate.set()
    await closing
    runtime.start_gate = None
    assert retry in runtime.alive
    second = Executor(store, runtime, tmp_path / "logs")
    try:
        with held_write(database):
            await second.start()
        shown = second.get_execution(execution.id)
        assert (shown.status, shown.failure_reason) == (Status.FAILED, FailureReason.AGENT_ERROR)
        assert retry in runtime.removed and retry not in runtime.alive
    finally:
        await second.close()
        store.close()
