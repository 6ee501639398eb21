"""The store's commits reach the disk within a second: what is synced, and when; then the
pass checkpoints the store's log (tests/unit/test_wal_checkpoint.py), whose failures end
nothing."""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from agent.domain import Status
from agent.executor import Executor
from agent.executor import executor as executor_module
from agent.store import StaleTransition, Store
from tests.unit.fake_runtime import FakeRuntime
from tests.unit.test_store import make_execution


def synced_files(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the inode of each file fdatasync(2) is called on (and still syncs it)."""
    inodes: list[int] = []
    real = os.fdatasync

    def recording(descriptor: int) -> None:
        inodes.append(os.fstat(descriptor).st_ino)
        real(descriptor)

    monkeypatch.setattr(os, "fdatasync", recording)
    return inodes


def test_each_committed_write_counts_and_a_read_or_a_refused_write_does_not(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "agent.db")
    try:
        before = store.commits
        execution = make_execution()
        store.insert_execution(execution)
        assert store.commits == before + 1
        store.get_execution(execution.id)
        store.list_jobs()
        assert store.commits == before + 1
        with pytest.raises(StaleTransition):
            store.transition(Status.RUNNING, replace(execution, status=Status.COMPLETED))
        assert store.commits == before + 1
    finally:
        store.close()


def test_a_sync_fdatasyncs_the_write_ahead_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "agent.db")
    try:
        store.insert_execution(make_execution())
        inodes = synced_files(monkeypatch)
        store.sync_to_disk()
        assert inodes == [os.stat(tmp_path / "agent.db-wal").st_ino]
    finally:
        store.close()


async def wait_for(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


@pytest.fixture
async def quick_syncs(
    tmp_path: Path, runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Executor, Store]]:
    """An executor whose store sync passes come every 10 ms."""
    monkeypatch.setattr(executor_module, "STORE_SYNC_SECONDS", 0.01)
    store = Store(tmp_path / "agent.db")
    executor = Executor(store, runtime, tmp_path / "logs", stop_grace=2.0)
    yield executor, store
    await executor.close()
    store.close()


async def test_the_start_then_each_commit_is_synced_and_an_idle_store_is_left_alone(
    quick_syncs: tuple[Executor, Store], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor, store = quick_syncs
    store.insert_execution(make_execution())  # as the agent's start writes, before the task
    inodes = synced_files(monkeypatch)
    syncing = asyncio.create_task(executor.sync_store_forever())
    try:
        await wait_for(lambda: len(inodes) == 1)
        await asyncio.sleep(0.1)
        assert len(inodes) == 1  # nothing committed since: no sync
        store.insert_execution(make_execution("b" * 32))
        await wait_for(lambda: len(inodes) == 2)
        assert set(inodes) == {os.stat(tmp_path / "agent.db-wal").st_ino}
        await asyncio.sleep(0.1)
        assert len(inodes) == 2
    finally:
        syncing.cancel()
        await asyncio.gather(syncing, return_exceptions=True)


async def test_a_failed_sync_is_logged_and_tried_again_when_the_task_restarts(
    quick_syncs: tuple[Executor, Store],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    executor, store = quick_syncs
    store.insert_execution(make_execution())
    attempts: list[bool] = []
    real = store.sync_to_disk

    def failing_once() -> None:
        attempts.append(True)
        if len(attempts) == 1:
            raise OSError(errno.EIO, "Input/output error")
        real()

    monkeypatch.setattr(store, "sync_to_disk", failing_once)
    with pytest.raises(OSError):
        await executor.sync_store_forever()
    assert any("could not be made durable" in record.message for record in caplog.records)
    assert executor.store_durable_at == 0.0
    # As the supervisor restarts it: the commit not yet synced is tried again.
    restarted_at = time.time()
    syncing = asyncio.create_task(executor.sync_store_forever())
    try:
        await wait_for(lambda: len(attempts) == 2)
        await asyncio.sleep(0.1)
        assert len(attempts) == 2
        # Passes with nothing to sync still find every commit durable.
        assert executor.store_durable_at > restarted_at + 0.05
    finally:
        syncing.cancel()
        await asyncio.gather(syncing, return_exceptions=True)


def tried(attempts: list[bool], count: int) -> bool:
    return len(attempts) == count


def durable_since(executor: Executor, moment: float) -> bool:
    return executor.store_durable_at >= moment


async def test_a_failing_checkpoint_is_told_once_and_ends_nothing(
    quick_syncs: tuple[Executor, Store],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.executor")
    executor, store = quick_syncs
    failing = True
    checkpoints: list[bool] = []
    real = store.checkpoint

    def checkpoint() -> None:
        checkpoints.append(failing)
        if failing:
            raise OSError(errno.ENOSPC, "the checkpoint of the store's log failed: full")
        real()

    monkeypatch.setattr(store, "checkpoint", checkpoint)
    syncing = asyncio.create_task(executor.sync_store_forever())
    try:
        for number in range(3):
            started = time.time()
            store.insert_execution(make_execution(f"{number:032x}"))
            await wait_for(functools.partial(tried, checkpoints, number + 1))
            # The log was synced all the same: the records are durable.
            await wait_for(functools.partial(durable_since, executor, started))
        failing = False
        store.insert_execution(make_execution("f" * 32))
        await wait_for(lambda: len(checkpoints) == 4)
        await asyncio.sleep(0.05)
        assert not syncing.done()
    finally:
        syncing.cancel()
        await asyncio.gather(syncing, return_exceptions=True)
    told = [record for record in caplog.records if "log grows" in record.message]
    assert [record.levelname for record in told] == ["WARNING"]
    assert "the checkpoint of the store's log failed: full" in told[0].message
    assert any("checkpointed again" in record.message for record in caplog.records)


async def test_the_durable_time_is_taken_before_the_commits_it_covers_are_counted(
    quick_syncs: tuple[Executor, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    executor, store = quick_syncs
    clock = [100.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    real = store.sync_to_disk

    def sync_while_a_commit_lands() -> None:
        real()
        # After the pass counted the commits it syncs: this one is not covered.
        clock[0] = 200.0
        store.insert_execution(make_execution("c" * 32))

    store.insert_execution(make_execution())
    monkeypatch.setattr(store, "sync_to_disk", sync_while_a_commit_lands)
    syncing = asyncio.create_task(executor.sync_store_forever())
    try:
        await wait_for(lambda: executor.store_durable_at > 0)
        assert executor.store_durable_at == 100.0
    finally:
        syncing.cancel()
        await asyncio.gather(syncing, return_exceptions=True)


async def test_a_pass_checkpoints_then_syncs_and_both_off_the_event_loop(
    quick_syncs: tuple[Executor, Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    executor, store = quick_syncs
    calls: list[tuple[str, int]] = []

    def recorded(name: str) -> Callable[[], None]:
        real = getattr(store, name)

        def call() -> None:
            calls.append((name, threading.get_ident()))
            real()

        return call

    for name in ("checkpoint", "sync_to_disk"):
        monkeypatch.setattr(store, name, recorded(name))
    store.insert_execution(make_execution())
    syncing = asyncio.create_task(executor.sync_store_forever())
    try:
        await wait_for(lambda: len(calls) == 2)
    finally:
        syncing.cancel()
        await asyncio.gather(syncing, return_exceptions=True)
    # The checkpoint first: the frame its write adds is synced with the rest.
    assert [name for name, _ in calls] == ["checkpoint", "sync_to_disk"]
    assert threading.get_ident() not in {thread for _, thread in calls}
