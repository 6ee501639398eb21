"""What the tests ask of the running kernel."""

from __future__ import annotations

import ctypes
import errno
import os
import re
from pathlib import Path

import pytest


def kernel_release() -> tuple[int, int]:
    """The running kernel's major and minor version."""
    major, minor = re.findall(r"\d+", os.uname().release)[:2]
    return int(major), int(minor)


# cachestat(2) (Linux 6.5) on x86_64, arm64 and the other architectures of the unified
# syscall table (not alpha or mips).
SYS_CACHESTAT = 451
_libc = ctypes.CDLL(None, use_errno=True)


class _CacheStatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")
    ]


def dirty_pages(path: Path) -> int:
    """How many of the file's pages in the page cache are not yet written to its disk."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        found = _CacheStat()
        whole = _CacheStatRange(0, 0)
        if _libc.syscall(SYS_CACHESTAT, descriptor, ctypes.byref(whole), ctypes.byref(found), 0):
            error = ctypes.get_errno()
            if error in (errno.ENOSYS, errno.EPERM):
                pytest.skip(
                    f"no cachestat(2) (Linux 6.5) to count dirty pages: {errno.errorcode[error]}"
                )
            raise OSError(error, os.strerror(error))
        return int(found.dirty + found.writeback)
    finally:
        os.close(descriptor)
