"""The store's log is checkpointed, and started again, from a worker thread on a connection
of its own: commits on the event loop's connection never checkpoint it short of the safety
net, and start it again only when one was under way as a checkpoint ended. Real SQLite
files; the log's state is read from its wal-index (tests/walindex.py)."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import store as store_module
from agent.runtime import syscalls
from agent.store import Store
from agent.walcheckpoint import LogCheckpointer
from tests.kernel import dirty_pages
from tests.unit.test_store import make_execution
from tests.walindex import WalState, wal_state


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


def rows(database: Path) -> int:
    """The executions a connection of the test's own finds, after an integrity check."""
    db = sqlite3.connect(database)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return int(db.execute("SELECT count(*) FROM executions").fetchone()[0])
    finally:
        db.close()


def test_commits_leave_the_log_to_the_checkpoint_which_starts_it_again(tmp_path: Path) -> None:
    database = tmp_path / "agent.db"
    store = Store(database)
    try:
        # The default (1,000 pages) would have had a commit checkpoint it.
        ids = write_log_pages(store, database, 1500)
        assert wal_state(database).checkpointed == 0
        store.checkpoint()
        # Copied whole, then started again by the checkpointer's own write: the first
        # commit after it, on the loop, neither checkpoints nor starts the log.
        assert wal_state(database).frames == 1
        assert dirty_pages(database) == 0  # the database file was synced after the copy
        store.insert_execution(make_execution("f" * 32))
        assert 1 < wal_state(database).frames < 50  # after the checkpointer's frame
        assert store.get_execution(ids[0]).id == ids[0]
    finally:
        store.close()
    assert rows(database) == len(ids) + 1


def test_past_the_safety_net_a_commit_checkpoints_the_log_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "COMMIT_CHECKPOINT_PAGES", 200)
    database = tmp_path / "agent.db"
    store = Store(database)
    try:
        for number in range(2000):
            store.insert_execution(make_execution(f"{number:032x}"))
            state = wal_state(database)
            if state.checkpointed:
                break
        else:
            raise AssertionError("no commit checkpointed the log")
        # The commit that took the log past the net checkpointed all of it.
        assert 200 <= state.checkpointed == state.frames < 300
    finally:
        store.close()


def test_checkpoints_in_a_thread_beside_commits_lose_nothing(tmp_path: Path) -> None:
    database = tmp_path / "agent.db"
    store = Store(database)
    done = threading.Event()
    failures: list[BaseException] = []

    def checkpoint_until_done() -> None:
        try:
            while not done.is_set():
                store.checkpoint()
        except BaseException as error:
            failures.append(error)

    checkpointer = threading.Thread(target=checkpoint_until_done)
    checkpointer.start()
    written = 0
    restarts = 0
    try:
        frames = 0
        # Paced, so that some checkpoints end between commits and the log starts again,
        # in either connection, while the other is busy.
        for number in range(3000):
            store.insert_execution(make_execution(f"{number:032x}"))
            written += 1
            if number % 50 == 0:
                time.sleep(0.002)
            now = wal_state(database).frames
            restarts += now < frames
            frames = now
    finally:
        done.set()
        checkpointer.join()
    try:
        assert failures == []
        assert restarts > 10
        assert len(store.list_executions()) == written
    finally:
        store.close()
    assert rows(database) == written


class HeldConnection:
    """Stands in for the checkpointer's connection: its first statement (the first that
    starts with `at`) waits until the test releases it; closing it is recorded."""

    def __init__(self, real: sqlite3.Connection, at: str = "") -> None:
        self.real = real
        self.at = at
        self.entered = threading.Event()
        self.release = threading.Event()
        self.closed = False

    def execute(self, sql: str) -> Any:
        if not self.entered.is_set() and sql.startswith(self.at):
            self.entered.set()
            assert self.release.wait(10)
        return self.real.execute(sql)

    def close(self) -> None:
        self.closed = True
        self.real.close()


def held_checkpoint(database: Path) -> tuple[Store, HeldConnection, threading.Thread]:
    """A store of one execution whose checkpoint runs in a thread, held at its first
    statement until the test releases it."""
    store = Store(database)
    store.insert_execution(make_execution())
    checkpointer: LogCheckpointer = store._checkpointer
    held = HeldConnection(checkpointer._db)
    checkpointer._db = held  # type: ignore[assignment]
    running = threading.Thread(target=store.checkpoint)
    running.start()
    assert held.entered.wait(10)
    return store, held, running


def test_closing_never_waits_for_a_checkpoint_under_way(tmp_path: Path) -> None:
    database = tmp_path / "agent.db"
    store, held, running = held_checkpoint(database)
    closing = threading.Thread(target=store.close)
    closing.start()
    closing.join(10)
    try:
        assert not closing.is_alive()  # closed while the checkpoint still waits
        assert not held.closed
    finally:
        held.release.set()
        running.join(10)
    assert held.closed  # by the checkpoint, once it ended
    store.checkpoint()  # a pass after the close does nothing
    assert rows(database) == 1


def test_the_checkpointer_never_makes_a_database(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError):
        LogCheckpointer(tmp_path / "agent.db", threading.Lock())
    assert list(tmp_path.iterdir()) == []


def test_while_the_store_writes_the_log_is_not_started_again_beside_it(tmp_path: Path) -> None:
    database = tmp_path / "agent.db"
    store = Store(database)
    try:
        store.insert_execution(make_execution())
        frames = wal_state(database).frames
        with store._write_lock:  # as during a write transaction of the loop's
            store.checkpoint()
        # Copied, but not started again: that is left to the loop's next commit (or the
        # next pass), rather than waited for.
        assert wal_state(database) == WalState(frames, frames)
        store.checkpoint()
        assert wal_state(database).frames == 1
    finally:
        store.close()


class CommitAfterCheckpoint:
    """Stands in for the checkpointer's connection: once, right after a checkpoint, the
    store commits, as the loop may before the checkpointer takes the write lock."""

    def __init__(self, real: sqlite3.Connection, store: Store) -> None:
        self.real = real
        self.store = store
        self.committed = False

    def execute(self, sql: str) -> Any:
        cursor = self.real.execute(sql)
        if "wal_checkpoint" in sql and not self.committed:
            result = cursor.fetchone()
            self.committed = True
            self.store.insert_execution(make_execution("e" * 32))
            return FixedCursor(result)
        return cursor

    def close(self) -> None:
        self.real.close()


class FixedCursor:
    def __init__(self, row: tuple[int, int, int]) -> None:
        self.row = row

    def fetchone(self) -> tuple[int, int, int]:
        return self.row


def test_a_commit_after_the_checkpoint_sends_it_round_again_before_the_write(
    tmp_path: Path,
) -> None:
    database = tmp_path / "agent.db"
    store = Store(database)
    try:
        store.insert_execution(make_execution())
        checkpointer: LogCheckpointer = store._checkpointer
        injecting = CommitAfterCheckpoint(checkpointer._db, store)
        checkpointer._db = injecting  # type: ignore[assignment]
        store.checkpoint()
        assert injecting.committed
        # Written after the commit's frames were copied in too: the log started again.
        # (Written at once, it would have gone after them, and the loop's next commit
        # would start the log.)
        assert wal_state(database).frames == 1
        assert len(store.list_executions()) == 2
    finally:
        store.close()


def test_a_checkpoint_while_another_runs_returns_at_once(tmp_path: Path) -> None:
    store, held, running = held_checkpoint(tmp_path / "agent.db")
    try:
        second = threading.Thread(target=store.checkpoint)
        second.start()
        second.join(10)
        assert not second.is_alive()
    finally:
        held.release.set()
        running.join(10)
        store.close()
    assert held.closed


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB filesystem of its own."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root")
    directory = tmp_path / "small"
    directory.mkdir()
    syscalls.mount("tmpfs", directory, "tmpfs", 0, "size=2m")
    try:
        yield directory
    finally:
        syscalls.unmount(directory)


def test_a_checkpoint_on_a_full_disk_says_so_and_the_next_one_catches_up(
    small_disk: Path,
) -> None:
    database = small_disk / "agent.db"
    store = Store(database)
    try:
        # Enough rows that copying them in makes the database file grow.
        ids = write_log_pages(store, database, 200)
        filler = small_disk / "filler"
        fill(filler)
        store.sync_to_disk()  # the log itself is still synced
        with pytest.raises(OSError) as refused:
            store.checkpoint()
        assert refused.value.errno == errno.ENOSPC
        assert "the checkpoint of the store's log failed" in str(refused.value)
        filler.unlink()
        store.checkpoint()
        assert wal_state(database).frames == 1
        assert len(store.list_executions()) == len(ids)
    finally:
        store.close()


def test_a_store_opens_on_a_full_disk_with_its_log_not_yet_copied(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    database = small_disk / "agent.db"
    writer = Store(database)  # kept open: its log stays, as after a crash
    try:
        ids = write_log_pages(writer, database, 200)
        fill(small_disk / "filler")
        reopened = Store(database)
        try:
            assert len(reopened.list_executions()) == len(ids)
        finally:
            reopened.close()
    finally:
        writer.close()
    assert any(
        "not checkpointed at start" in record.message and "failed" in record.message
        for record in caplog.records
    )


def fill(filler: Path) -> None:
    """Writes `filler` until its filesystem is full."""
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as full:
            while True:
                os.write(descriptor, bytes(4096))
    finally:
        os.close(descriptor)
    assert full.value.errno == errno.ENOSPC
