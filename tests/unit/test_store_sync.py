"""The store's commits reach the disk within a second: what is synced, and when."""

from __future__ import annotations

import asyncio
import errno
import os
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
    # As the supervisor restarts it: the commit not yet synced is tried again.
    syncing = asyncio.create_task(executor.sync_store_forever())
    try:
        await wait_for(lambda: len(attempts) == 2)
        await asyncio.sleep(0.1)
        assert len(attempts) == 2
    finally:
        syncing.cancel()
        await asyncio.gather(syncing, return_exceptions=True)
