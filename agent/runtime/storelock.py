"""A lock for a store that more than one process writes: the agent and `image-import`.

Inside one process an asyncio lock orders the writers; across processes an exclusive
flock on a file beside the store does. skopeo and umoci take no lock of their own on an
OCI layout, so without it an import running beside a pull or a prune could lose an
index entry or have its blobs collected.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path
from types import TracebackType

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
