"""Checkpoints of the store's write-ahead log, made from a worker thread on a connection of
their own, so that commits on the event loop seldom wait for the disk.

A checkpoint copies the log into the database file and syncs both files. The commit that
comes after a complete checkpoint starts the log again from its beginning and syncs the
log's new header. SQLite does both on whatever connection happens to trigger them. Left to
the event loop's connection, each would stop every RPC and job for a disk flush: 7-25 ms
on an idle or writing local disk, far longer on a slow or busy one. So after a complete
checkpoint the checkpointer also makes a write of its own that changes nothing, and that
write starts the log again in the worker thread.

The write is made with the store's write lock held, after a last checkpoint under that
lock, so no commit can come between them. That last checkpoint copies only what was
committed since the one before it, mostly nothing, which costs no flush. A commit that
comes meanwhile waits, for one flush mostly and three at most. Under a steady stream of
commits faster than a checkpoint's flushes, no checkpoint copies the whole log, and the log
grows. Then the commit that takes the log past the store's safety net
(COMMIT_CHECKPOINT_PAGES) checkpoints it on the loop, copying only what the worker has not
copied, and the next commit starts it again there.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import urllib.parse
from pathlib import Path

from agent.diskspace import is_no_space

SQLITE_BUSY = 5
# Checkpoints tried in one pass before giving up on starting the log again: each after the
# first copies only what was committed while the one before ran.
CHECKPOINT_TRIES = 3


def is_busy(error: sqlite3.Error) -> bool:
    """True when SQLite gave up waiting for a lock of another connection's."""
    return getattr(error, "sqlite_errorcode", 0) & 0xFF == SQLITE_BUSY


class LogCheckpointer:
    """A second connection to a WAL-mode database that checkpoints its log."""

    def __init__(self, path: Path, write_lock: threading.Lock) -> None:
        """Opens the database at `path`, which must exist (mode=rw: this never creates a
        file, and never follows a database removed since into a new empty one).
        `write_lock` is held by the owner's connection around each of its write
        transactions: the checkpointer takes it, when it is free, for the last checkpoint
        and the write that starts the log again."""
        uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=rw"
        # timeout=0: never waits for a lock of SQLite's (see _restart_log).
        self._db = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=0
        )
        # In WAL mode, NORMAL syncs the log before a checkpoint, the database file after
        # it, and the log's header when a write starts it again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._write_lock = write_lock
        self._state = threading.Lock()
        self._running = False
        self._closed = False

    def checkpoint(self) -> None:
        """Copies what it can of the log into the database file (PASSIVE: it waits for
        no reader or writer), and, once that was the whole log, starts the log again.
        Blocking: call it from a worker thread. Does nothing once closed, or while another
        call runs. Raises OSError (ENOSPC when the disk is full, EIO otherwise)."""
        with self._state:
            if self._closed or self._running:
                return
            self._running = True
        try:
            for _ in range(CHECKPOINT_TRIES):
                if self._checkpointed_whole() and self._restart_log():
                    return
        except sqlite3.Error as error:
            if is_busy(error):
                return  # the next pass tries again
            code = errno.ENOSPC if is_no_space(error) else errno.EIO
            raise OSError(code, f"the checkpoint of the store's log failed: {error}") from error
        finally:
            with self._state:
                self._running = False
                if self._closed:
                    self._db.close()

    def _checkpointed_whole(self) -> bool:
        """One passive checkpoint; True when it copied the whole log (PASSIVE counts the
        log as it was when it began: commits made meanwhile are left for the next)."""
        busy, frames, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return not busy and frames > 0 and copied == frames

    def _restart_log(self) -> bool:
        """With the owner's write lock held, so that no commit slips in and starts the log
        on the loop: a last checkpoint, of what was committed since the caller's (nothing,
        mostly, which costs no flush), then a write that changes nothing (the schema
        version, set to itself): as the first write since the log was copied whole, it
        starts the log again, here. False when the owner's connection is writing: the
        caller checkpoints what that adds and tries again."""
        if not self._write_lock.acquire(blocking=False):
            return False
        try:
            if not self._checkpointed_whole():
                return True  # a reader's snapshot held part of it back: the next pass
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (version,) = self._db.execute("PRAGMA user_version").fetchone()
                self._db.execute(f"PRAGMA user_version = {int(version)}")
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        finally:
            self._write_lock.release()
        return True

    def close(self) -> None:
        """Closes the connection, at once or, while a checkpoint runs, when it ends:
        never waits for the disk."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            if not self._running:
                self._db.close()
