"""One agent per data directory and per address.

Two agents on one data directory would both re-adopt the same containers, write the same
store and remove each other's bundles; two on one address would share its connections
(SO_REUSEPORT) and answer for each other. Either is refused at start, with a message that
says which other agent is in the way.

`image-import` does not take the data directory's lock: preloading an image while the
agent runs is an operator's ordinary step. It touches only the image store, which
serializes its own writers across processes (agent.runtime.images).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

LOCK_FILE = "agent.lock"
LOCK_MODE = 0o600


class AlreadyServing(Exception):
    """Another agent holds the data directory or serves on the address."""


class DataDirLock:
    """An exclusive flock on `<data-dir>/agent.lock`, held for the agent's life.

    The lock goes with the process (and only with it: the descriptor is not inherited by
    conmon or the runtime), so a crashed agent leaves nothing to clean up.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self._fd = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        """Takes the lock; AlreadyServing when another process holds it."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, LOCK_MODE)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise AlreadyServing(f"{path} is not a regular file")
            os.fchmod(fd, LOCK_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                raise AlreadyServing(
                    f"the data directory {data_dir} is in use by another agent (pid {holder}, "
                    f"holding {path}); stop it, or give this one another --data-dir"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path)

    def release(self) -> None:
        """Lets another agent have the data directory."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def address_in_use(address: str) -> AlreadyServing:
    """The error of a TCP address the server could not bind (grpc says no more)."""
    return AlreadyServing(
        f"cannot listen on {address}: {os.strerror(errno.EADDRINUSE).lower()} (another "
        "agent?) or the address is not available on this host"
    )
