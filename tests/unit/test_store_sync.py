"""The store's commits reach the disk within a second: what is synced, and when."""

from __future__ import annotations

import asyncio
import os
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


async def test_commits_are_synced_within_the_interval_and_an_idle_store_is_left_alone(
    tmp_path: Path, runtime: FakeRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor_module, "STORE_SYNC_SECONDS", 0.01)
    store = Store(tmp_path / "agent.db")
    executor = Executor(store, runtime, tmp_path / "logs", stop_grace=2.0)
    inodes = synced_files(monkeypatch)
    syncing = asyncio.create_task(executor.sync_store_forever())
    try:
        await asyncio.sleep(0.1)
        assert inodes == []  # nothing committed since it started
        store.insert_execution(make_execution())
        for _ in range(100):
            if inodes:
                break
            await asyncio.sleep(0.01)
        assert inodes == [os.stat(tmp_path / "agent.db-wal").st_ino]
        await asyncio.sleep(0.1)
        assert len(inodes) == 1  # no commit since: no sync
    finally:
        syncing.cancel()
        await asyncio.gather(syncing, return_exceptions=True)
        await executor.close()
        store.close()
