"""A full data disk: triggers refused, ends never lost, slots freed, the writer stopped."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import sqlite3
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.diskspace import DiskSpace, format_bytes, is_no_space
from agent.domain import (
    CronPolicy,
    EventKind,
    Execution,
    FailureReason,
    ImageSpec,
    JobEvent,
    JobKind,
    JobSpec,
    RetryPolicy,
    Status,
    Trigger,
    TriggerKind,
)
from agent.errors import DiskFull, ResourceExhausted
from agent.executor import Executor
from agent.executor.scheduler import CronScheduler, schedule_times
from agent.runtime.errors import CommandError
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime

SPEC = JobSpec(name="filler", image=ImageSpec("busybox:latest"))
TRIGGER = Trigger(TriggerKind.ENDPOINT, remote_address="ipv4:127.0.0.1:1")
MiB = 1024**2


class TightDisk(DiskSpace):
    """A data directory whose free space the test sets."""

    def __init__(self, data_dir: Path, min_free: int = 16 * MiB) -> None:
        super().__init__(data_dir, min_free, reserve_bytes=64 * 1024)
        self.free_bytes = 1024 * MiB

    def free(self) -> int:
        return self.free_bytes


class FullStore:
    """Makes the store's transitions fail as on a full disk while `full` is set."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        transition = store.transition

        def guarded(*args: Any, **kwargs: Any) -> Any:
            if self.full:
                raise DiskFull("disk is full: the store cannot write: database or disk is full")
            return transition(*args, **kwargs)

        monkeypatch.setattr(store, "transition", guarded)


@pytest.fixture
async def rig(
    tmp_path: Path, runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Executor, TightDisk, FullStore, Store]]:
    store = Store(tmp_path / "agent.db")
    disk = TightDisk(tmp_path)
    executor = Executor(store, runtime, tmp_path / "logs", node_limit=1, disk=disk)
    executor.register_jobs([SPEC], "", replace_existing=False)
    await executor.start()
    watching = asyncio.create_task(executor.watch_disk_forever())
    yield executor, disk, FullStore(store, monkeypatch), store
    watching.cancel()
    await executor.close()
    store.close()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


# The free space and the reserve file.


def test_a_refusal_names_the_free_space_and_the_reserve(tmp_path: Path) -> None:
    disk = TightDisk(tmp_path)
    disk.check()
    disk.free_bytes = 3 * MiB
    with pytest.raises(DiskFull) as refused:
        disk.check()
    assert isinstance(refused.value, ResourceExhausted)
    assert str(refused.value) == (
        "disk is full: the data directory's filesystem has 3.0 MiB free, less than the "
        "reserve of 16.0 MiB (--min-free-space)"
    )


def test_the_reserve_file_is_allocated_released_and_made_again(tmp_path: Path) -> None:
    disk = DiskSpace(tmp_path, min_free=0, reserve_bytes=MiB)
    assert disk.make_reserve()
    info = disk.reserve_file.stat()
    assert info.st_blocks * 512 >= MiB and stat.S_IMODE(info.st_mode) == 0o600
    assert disk.release_reserve() and not disk.reserve_file.exists()
    assert not disk.release_reserve()
    assert disk.make_reserve() and disk.reserve_file.exists()


def test_the_reserve_is_not_made_where_it_would_eat_into_the_free_space(tmp_path: Path) -> None:
    disk = TightDisk(tmp_path)
    disk.free_bytes = disk.min_free + disk.reserve_bytes - 1
    assert not disk.make_reserve() and not disk.reserve_file.exists()


def test_no_space_errors_are_recognised() -> None:
    assert is_no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert is_no_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_no_space(OSError(errno.EACCES, "Permission denied"))
    assert [format_bytes(size) for size in (0, 512 * 1024, 63 * MiB + 900 * 1024)] == [
        "0 B",
        "512.0 KiB",
        "63.9 MiB",
    ]


def test_a_store_that_cannot_grow_says_disk_full_and_writes_again_once_it_can(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "agent.db")
    db: sqlite3.Connection = store._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")
    spec = JobSpec(name="big", image=ImageSpec("busybox:latest"), env={"X": "x" * 100_000})
    executor = Executor(store, FakeRuntime(), tmp_path / "logs")
    with pytest.raises(DiskFull) as full:
        executor.register_jobs([spec], "", replace_existing=False)
    assert "database or disk is full" in str(full.value)
    assert not db.in_transaction
    db.execute("PRAGMA max_page_count = 1073741823")
    executor.register_jobs([spec], "", replace_existing=False)
    assert store.get_job("big").spec == spec
    store.close()


# The executor.


async def test_a_trigger_is_refused_while_the_disk_is_low(
    rig: tuple[Executor, TightDisk, FullStore, Store],
) -> None:
    executor, disk, _, _ = rig
    disk.free_bytes = 10 * MiB
    with pytest.raises(DiskFull, match=r"has 10\.0 MiB free, less than the reserve of 16\.0 MiB"):
        await executor.trigger("filler", TRIGGER)
    assert executor.list_executions() == []
    disk.free_bytes = 100 * MiB
    assert (await executor.trigger("filler", TRIGGER)).status is Status.PENDING


async def test_a_process_that_fails_on_a_full_disk_says_so(
    rig: tuple[Executor, TightDisk, FullStore, Store], runtime: FakeRuntime
) -> None:
    executor, disk, _, _ = rig
    execution = await executor.trigger("filler", TRIGGER)
    await until(lambda: executor.get_execution(execution.id).status is Status.RUNNING)
    disk.free_bytes = 5 * MiB
    runtime.exit(execution.container_id, 1)
    await until(lambda: executor.get_execution(execution.id).status.terminal)
    final = executor.get_execution(execution.id)
    assert final.status is Status.FAILED
    assert final.message.startswith("the process exited with code 1; disk is full: ")


async def test_an_end_the_store_has_no_room_for_is_kept_frees_its_slot_and_is_written_later(
    rig: tuple[Executor, TightDisk, FullStore, Store], runtime: FakeRuntime
) -> None:
    executor, disk, store_full, store = rig
    disk.make_reserve()
    first = await executor.trigger("filler", TRIGGER)
    await until(lambda: executor.get_execution(first.id).status is Status.RUNNING)
    second = await executor.trigger("filler", TRIGGER)
    assert executor.get_execution(second.id).queue_position == 1

    store_full.full = True
    runtime.exit(first.container_id, 0)
    # The reserve went to make room; the end is shown though not yet stored.
    await until(lambda: executor.get_execution(first.id).status is Status.COMPLETED)
    assert not disk.reserve_file.exists()
    assert store.get_execution(first.id).status is Status.RUNNING
    # Its container goes; its exit record stays while the end is unwritten, for the next
    # agent to read should this one die now.
    await until(lambda: first.container_id in runtime.removed)
    # Its slot went to the next one, which the full store ends as well: nothing is stuck.
    await until(lambda: executor.get_execution(second.id).status.terminal)
    ended = executor.get_execution(second.id)
    assert (ended.status, ended.failure_reason) == (Status.FAILED, FailureReason.AGENT_ERROR)
    assert "disk is full" in ended.message
    assert executor.load()[:2] == (0, 0)

    # The first's end is its exit alone: read again from the record, it is the same. The
    # second's (the agent's failure) is not in its record: that one goes.
    assert runtime.forgotten == [second.container_id]
    store_full.full = False
    await until(lambda: store.get_execution(second.id).status is Status.FAILED)
    assert store.get_execution(first.id).status is Status.COMPLETED
    await until(lambda: first.container_id in runtime.forgotten)
    # And the reserve is made again, since the disk has room.
    await until(disk.reserve_file.exists)
    third = await executor.trigger("filler", TRIGGER)
    await until(lambda: executor.get_execution(third.id).status is Status.RUNNING)
    runtime.exit(third.container_id, 0)
    await until(lambda: store.get_execution(third.id).status is Status.COMPLETED)


async def test_a_watcher_gets_the_kept_end_once_it_is_written(
    rig: tuple[Executor, TightDisk, FullStore, Store], runtime: FakeRuntime
) -> None:
    executor, _, store_full, _ = rig
    execution = await executor.trigger("filler", TRIGGER)
    await until(lambda: executor.get_execution(execution.id).status is Status.RUNNING)
    watched = asyncio.create_task(asyncio.wait_for(_last_status(executor, execution.id), 10))
    await asyncio.sleep(0.05)
    store_full.full = True
    runtime.exit(execution.container_id, 0)
    await asyncio.sleep(0.2)
    assert not watched.done()
    store_full.full = False
    assert await watched is Status.COMPLETED


async def _last_status(executor: Executor, execution_id: str) -> Status:
    statuses = [event.execution.status async for event in executor.watch(execution_id)]
    return statuses[-1]


@contextlib.asynccontextmanager
async def two_running_writers(
    tmp_path: Path, runtime: FakeRuntime
) -> AsyncIterator[tuple[Executor, TightDisk, Execution, Execution, asyncio.Task[None]]]:
    """An executor that watches a tight disk, with runs of "filler" and "quiet" started;
    and the task of its disk watch."""
    store = Store(tmp_path / "agent.db")
    disk = TightDisk(tmp_path)
    executor = Executor(store, runtime, tmp_path / "logs", disk=disk)
    quiet_spec = JobSpec(name="quiet", image=ImageSpec("busybox:latest"))
    executor.register_jobs([SPEC, quiet_spec], "", replace_existing=False)
    await executor.start()
    watching = asyncio.create_task(executor.watch_disk_forever())
    try:
        filler = await executor.trigger("filler", TRIGGER)
        quiet = await executor.trigger("quiet", TRIGGER)
        await until(lambda: {filler.container_id, quiet.container_id} <= set(runtime.started))
        yield executor, disk, filler, quiet, watching
    finally:
        watching.cancel()
        await executor.close()
        store.close()


async def test_on_a_full_disk_the_biggest_writer_is_stopped_and_no_one_else(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    async with two_running_writers(tmp_path, runtime) as (executor, disk, filler, quiet, _):
        runtime.usage[filler.container_id] = 40 * MiB
        (tmp_path / "logs" / quiet.id).mkdir(parents=True)
        (tmp_path / "logs" / quiet.id / "1.log").write_bytes(b"x" * 1024)
        disk.free_bytes = 0
        await until(lambda: executor.get_execution(filler.id).status.terminal)
        final = executor.get_execution(filler.id)
        assert final.status is Status.FAILED
        assert final.message.startswith("stopped by the agent: disk is full: ")
        assert final.message.endswith("this execution took the most of it (40.0 MiB)")
        await asyncio.sleep(1.5)
        assert executor.get_execution(quiet.id).status is Status.RUNNING


async def test_a_writer_whose_stop_fails_stays_the_one_to_evict_and_no_one_else_is_stopped(
    tmp_path: Path, runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The biggest writer cannot be stopped at first (the runtime refuses its signals): the
    disk watch says so and keeps going, never marks it evicted, never evicts a smaller
    run in its place, and stops the writer at its next pass."""
    monkeypatch.setattr("agent.executor.executor.DISK_CHECK_SECONDS", 0.05)
    refusals = 2
    stop = runtime.stop

    async def refusing_stop(
        container_id: str, grace_seconds: float, signal: str | None = None
    ) -> None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise CommandError(["youki", "kill"], 1, "invalid signal: SIGBOGUS")
        await stop(container_id, grace_seconds, signal)

    runtime.stop = refusing_stop  # type: ignore[method-assign]
    async with two_running_writers(tmp_path, runtime) as (executor, disk, filler, quiet, watching):
        runtime.usage[filler.container_id] = 40 * MiB
        runtime.usage[quiet.container_id] = 4 * MiB
        disk.free_bytes = 0
        await until(lambda: executor.get_execution(filler.id).status.terminal, timeout=10)
        final = executor.get_execution(filler.id)
        assert (final.status, final.failure_reason) == (Status.FAILED, FailureReason.EXIT_CODE)
        assert final.message.startswith("stopped by the agent: disk is full: ")
        assert refusals == 0 and not watching.done()
        assert [container for container, _ in runtime.stopped] == [filler.container_id]
        assert executor.get_execution(quiet.id).status is Status.RUNNING


async def test_a_cron_run_on_a_low_disk_is_missed_with_the_reason(
    tmp_path: Path, runtime: FakeRuntime
) -> None:
    store = Store(tmp_path / "agent.db")
    disk = TightDisk(tmp_path)
    executor = Executor(store, runtime, tmp_path / "logs", disk=disk)
    spec = JobSpec(
        "tick", ImageSpec("busybox"), kind=JobKind.CRON, schedule="* * * * * *", cron=CronPolicy()
    )
    executor.register_jobs([spec], "", replace_existing=False)
    job = executor.get_job("tick")
    due = next(schedule_times(job, job.updated_at))

    class At:
        def now(self) -> datetime:
            return due

        async def sleep(self, seconds: float) -> None:
            await asyncio.sleep(3600)

    disk.free_bytes = 2 * MiB
    try:
        await CronScheduler(executor, store, At()).tick()
        assert executor.list_executions("tick") == []
        assert store.get_cron_state("tick").missed == 1
        events = store.node_events_after(0)
        [miss] = [
            e for e in events if isinstance(e, JobEvent) and e.kind is EventKind.SCHEDULE_MISSED
        ]
        assert miss.schedule_time == due
        assert miss.message == (
            f"the run of {due.isoformat()} was missed: disk is full: the data directory's "
            "filesystem has 2.0 MiB free, less than the reserve of 16.0 MiB (--min-free-space)"
        )
    finally:
        await executor.close()
        store.close()


async def test_a_cancel_kept_in_memory_is_never_run_again_by_the_next_agent(
    tmp_path: Path, runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of a cancelled run cannot be written; the agent dies before it can. The
    next agent must not read the killed process's exit record as a plain failure and
    retry it."""
    store = Store(tmp_path / "agent.db")
    first = Executor(store, runtime, tmp_path / "logs", disk=TightDisk(tmp_path))
    retried = replace(SPEC, retry=RetryPolicy(backoff_limit=3, initial_delay_seconds=0.0))
    first.register_jobs([retried], "", replace_existing=False)
    execution = await first.trigger("filler", TRIGGER)
    await until(lambda: first.get_execution(execution.id).status is Status.RUNNING)
    FullStore(store, monkeypatch).full = True
    await first.cancel(execution.id)
    assert first.get_execution(execution.id).status is Status.CANCELLED
    assert store.get_execution(execution.id).status is Status.RUNNING
    await first.close()

    second = Executor(store, runtime, tmp_path / "logs")
    monkeypatch.undo()
    await second.start()
    await until(lambda: second.get_execution(execution.id).status.terminal)
    await asyncio.sleep(0.1)
    assert runtime.created == [execution.container_id]
    assert second.get_execution(execution.id).status is not Status.COMPLETED
    await second.close()
    store.close()
