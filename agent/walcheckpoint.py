"""Checkpoints of the store's write-ahead log, made from a worker thread on a connection of
their own, so that no commit on the event loop waits for the disk.

A checkpoint copies the log into the database file and syncs both files. The commit that
comes after a complete checkpoint starts the log again from its beginning and syncs the
log's new header. SQLite does both on whatever connection happens to trigger them. If they
were left to the event loop's connection, each would stop every RPC and job for a disk
flush: 7-25 ms on an idle or writing local disk, far longer on a slow or busy one. So after
a complete checkpoint, the checkpointer also makes a write of its own that changes nothing.
That write starts the log again in the worker thread. The loop's commits never wait for a
checkpoint's flushes. They wait for the header's flush only when a commit collides with
that write.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import urllib.parse
from pathlib import Path

from agent.diskspace import is_no_space

SQLITE_BUSY = 5


class LogCheckpointer:
    """A second connection to a WAL-mode database that checkpoints its log."""

    def __init__(self, path: Path) -> None:
        """Opens the database at `path`, which must exist (mode=rw: this never creates a
        file, and never follows a database removed since into a new empty one)."""
        uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=rw"
        # timeout=0: a write lock held by the loop is never waited for (see restart_log).
        self._db = sqlite3.connect(
            uri, uri=True, isolation_level=None, check_same_thread=False, timeout=0
        )
        # In WAL mode, NORMAL syncs the log before a checkpoint, the database file after
        # it, and the log's header when a write starts it again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._state = threading.Lock()
        self._running = False
        self._closed = False

    def checkpoint(self) -> None:
        """Copies what it can of the log into the database file (PASSIVE: it waits for
        no reader or writer), and, when that was the whole log, starts the log again.
        Blocking: call it from a worker thread. Does nothing once closed. Raises OSError
        (ENOSPC when the disk is full, EIO otherwise)."""
        with self._state:
            if self._closed:
                return
            self._running = True
        try:
            busy, frames, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy and frames > 0 and copied == frames:
                self._restart_log()
        except sqlite3.Error as error:
            if error.sqlite_errorcode & 0xFF == SQLITE_BUSY:
                return  # the next pass tries again
            code = errno.ENOSPC if is_no_space(error) else errno.EIO
            raise OSError(code, f"the checkpoint of the store's log failed: {error}") from error
        finally:
            with self._state:
                self._running = False
                if self._closed:
                    self._db.close()

    def _restart_log(self) -> None:
        """A write that changes nothing (the schema version, set to itself): as the first
        write since the complete checkpoint, it starts the log again, here. When the loop
        holds the write lock, BEGIN fails at once (busy) and the loop's commit starts it."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            self._db.execute(f"PRAGMA user_version = {int(version)}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Closes the connection, at once or, while a checkpoint runs, when it ends:
        never waits for the disk."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            if not self._running:
                self._db.close()
