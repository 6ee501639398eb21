"""The store's commits reach the disk within a second: what is synced, and when; its log
is checkpointed by that sync, in a worker thread, and not by the commits on the loop."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent import store as store_module
from agent.domain import Status
from agent.executor import Executor
from agent.executor import executor as executor_module
from agent.runtime import syscalls
from agent.store import StaleTransition, Store
from tests.unit.fake_runtime import FakeRuntime
from tests.unit.test_store import make_execution
from tests.walindex import wal_state


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


def write_log_pages(store: Store, database: Path, pages: int) -> list[str]:
    """Commits executions, each its own transaction, until the log of the store (at
    `database`) holds more than `pages` pages; their ids."""
    ids: list[str] = []
    while wal_state(database).frames <= pages:
        if len(ids) > 10 * pages:
            raise AssertionError(f"the log never held {pages} pages: it was checkpointed")
        execution = make_execution(f"{len(ids):032x}")
        store.insert_execution(execution)
        ids.append(execution.id)
    return ids


def test_commits_leave_the_log_to_the_sync_and_it_checkpoints_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    try:
        # The default (1,000 pages) would have had a commit checkpoint it on the loop.
        ids = write_log_pages(store, tmp_path / "agent.db", 1500)
        assert wal_state(tmp_path / "agent.db").checkpointed == 0
        store.sync_to_disk()
        state = wal_state(tmp_path / "agent.db")
        assert state.checkpointed == state.frames > 1500
        # Every frame is in the database file now: the next commit starts the log again.
        store.insert_execution(make_execution("f" * 32))
        assert 0 < wal_state(tmp_path / "agent.db").frames < 100
        assert store.get_execution(ids[0]).id == ids[0]
    finally:
        store.close()
    reopened = Store(tmp_path / "agent.db")
    try:
        assert len(reopened.list_executions()) == len(ids) + 1
    finally:
        reopened.close()


def test_past_the_safety_net_a_commit_checkpoints_the_log_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "COMMIT_CHECKPOINT_PAGES", 200)
    store = Store(tmp_path / "agent.db")
    try:
        for number in range(2000):
            store.insert_execution(make_execution(f"{number:032x}"))
            state = wal_state(tmp_path / "agent.db")
            if state.checkpointed:
                break
        else:
            raise AssertionError("no commit checkpointed the log")
        # The commit that took the log past the net checkpointed all of it.
        assert 200 <= state.checkpointed == state.frames < 300
    finally:
        store.close()


def test_syncs_in_a_thread_beside_commits_lose_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    done = threading.Event()
    failures: list[BaseException] = []
    passes = 0

    def sync_until_done() -> None:
        nonlocal passes
        try:
            while not done.is_set():
                store.sync_to_disk()
                passes += 1
        except BaseException as error:
            failures.append(error)

    syncer = threading.Thread(target=sync_until_done)
    syncer.start()
    try:
        ids = write_log_pages(store, tmp_path / "agent.db", 3000)
    finally:
        done.set()
        syncer.join()
    try:
        assert failures == []
        assert passes > 10
        assert len(store.list_executions()) == len(ids)
    finally:
        store.close()


def test_a_sync_waits_for_nothing_once_the_store_is_closed(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    store.insert_execution(make_execution())
    store.sync_to_disk()
    store.close()
    store.sync_to_disk()
    assert not (tmp_path / "agent.db-wal").exists()  # the last connection closed: folded in


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB filesystem of its own."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root")
    directory = tmp_path / "small"
    directory.mkdir()
    syscalls.mount("tmpfs", directory, "tmpfs", 0, "size=1m")
    try:
        yield directory
    finally:
        syscalls.unmount(directory)


def test_a_checkpoint_on_a_full_disk_says_so_and_the_next_one_catches_up(
    small_disk: Path,
) -> None:
    store = Store(small_disk / "agent.db")
    try:
        ids = write_log_pages(store, small_disk / "agent.db", 60)
        filler = small_disk / "filler"
        descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError) as full:
                while True:
                    os.write(descriptor, bytes(4096))
        finally:
            os.close(descriptor)
        assert full.value.errno == errno.ENOSPC
        with pytest.raises(OSError) as refused:
            store.sync_to_disk()
        assert refused.value.errno == errno.ENOSPC
        assert "its log is on disk, but the checkpoint into the database failed" in str(
            refused.value
        )
        filler.unlink()
        store.sync_to_disk()
        state = wal_state(small_disk / "agent.db")
        assert state.checkpointed == state.frames > 60
        assert len(store.list_executions()) == len(ids)
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
