"""Locks for a store that more than one process writes: the agent and `image-import`.

Inside one process an asyncio lock orders the writers; across processes an exclusive
flock on a file beside the store does. skopeo and umoci take no lock of their own on an
OCI layout, so without it an import running beside a pull or a prune could lose an
index entry or have its blobs collected. KeyedLocks gives one such lock per name (an
image reference, a digest), so that work on one image never waits for another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

from agent.hostfs import make_dir

LOCK_MODE = 0o600


class StoreLock:
    """`async with lock:` holds the store against this process's other tasks and other
    processes; uncontended, the flock costs two system calls and no thread."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = asyncio.Lock()
        self._fd = -1

    async def __aenter__(self) -> None:
        await self._local.acquire()
        try:
            if self._fd < 0:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, LOCK_MODE)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                await asyncio.to_thread(fcntl.flock, self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._local.release()
            raise

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._local.release()

    def close(self) -> None:
        """Closes the lock file (the lock must not be held)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class KeyedLocks:
    """One StoreLock per key, its file in `directory` named by the key's digest; a key's
    lock lives while someone holds or waits for it. The files stay (a few bytes each):
    removing a lock file that another process may have open would split the lock."""

    def __init__(self, directory: Path, prefix: str) -> None:
        self._directory = directory
        self._prefix = prefix
        self._locks: dict[str, tuple[StoreLock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Holds `key` against this process's other tasks and other processes."""
        lock, users = self._locks.get(key) or (self._new_lock(key), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
                lock.close()
            else:
                self._locks[key] = (lock, users - 1)

    def _new_lock(self, key: str) -> StoreLock:
        make_dir(self._directory)
        name = hashlib.sha256(key.encode()).hexdigest()[:32]
        return StoreLock(self._directory / f"{self._prefix}-{name}")
