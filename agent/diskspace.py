"""The data directory's free space: the admission reserve and the emergency reserve file.

Below `min_free` bytes free, new executions are refused (RESOURCE_EXHAUSTED) so that the
ones already admitted can still record how they end. The reserve file is a few MiB the
agent allocates at start and gives back to the filesystem when a write of its own fails
for want of space: the terminal states of running executions then still fit. It is made
again once the filesystem has room for it above `min_free`.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from pathlib import Path

from agent import hostfs
from agent.errors import DiskFull

log = logging.getLogger(__name__)
RESERVE_FILE = "reserve"
RESERVE_BYTES = 4 * 1024**2
# Below this the filesystem counts as full: a writer there is stopped (see the executor).
FULL_BYTES = 1024**2
SQLITE_FULL = 13
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def format_bytes(size: int) -> str:
    """A size as people read it: 0 B, 512 KiB, 63.9 MiB."""
    amount = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    raise AssertionError("unreachable")


def is_no_space(error: BaseException) -> bool:
    """True for an error that means the filesystem (or a quota) is full."""
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", 0) & 0xFF == SQLITE_FULL
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


class DiskSpace:
    """Free space of the filesystem that holds the data directory, and its reserve file."""

    def __init__(self, data_dir: Path, min_free: int, reserve_bytes: int = RESERVE_BYTES) -> None:
        self.data_dir = data_dir
        self.min_free = min_free
        self.reserve_bytes = reserve_bytes
        self.reserve_file = data_dir / RESERVE_FILE

    def free(self) -> int:
        """Bytes an unprivileged writer may still use (statvfs f_bavail)."""
        stats = os.statvfs(self.data_dir)
        return stats.f_bavail * stats.f_frsize

    def low(self) -> bool:
        """True when less than `min_free` bytes are free."""
        return self.free() < self.min_free

    def full(self) -> bool:
        """True when the filesystem has (next to) nothing left."""
        return self.free() < FULL_BYTES

    def describe(self) -> str:
        """What a refusal or a failure says: "disk is full", the free space, the reserve."""
        return (
            f"disk is full: the data directory's filesystem has {format_bytes(self.free())} "
            f"free, less than the reserve of {format_bytes(self.min_free)} (--min-free-space)"
        )

    def check(self) -> None:
        """Raises DiskFull while less than `min_free` bytes are free."""
        if self.low():
            raise DiskFull(self.describe())

    def make_reserve(self) -> bool:
        """Allocates the reserve file if it is missing and fits above `min_free`; True when
        it is in place afterwards."""
        if self.reserve_file.exists():
            return True
        if self.free() - self.reserve_bytes < self.min_free:
            return False
        try:
            hostfs.create_file(self.reserve_file)
            fd = os.open(self.reserve_file, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError as error:
            self.reserve_file.unlink(missing_ok=True)
            log.warning("cannot allocate the disk reserve %s: %s", self.reserve_file, error)
            return False
        log.info("disk reserve of %s in place", format_bytes(self.reserve_bytes))
        return True

    def release_reserve(self) -> bool:
        """Gives the reserve file's space back to the filesystem; False when there was none."""
        try:
            self.reserve_file.unlink()
        except FileNotFoundError:
            return False
        log.warning(
            "the data directory's filesystem is full: released the disk reserve (%s) "
            "so that executions can record how they end",
            format_bytes(self.reserve_bytes),
        )
        return True


def usage(path: Path) -> int:
    """Bytes the files under `path` take on disk (0 when it is gone); symlinks not followed."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total
