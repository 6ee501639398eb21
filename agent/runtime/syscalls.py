"""mount(2), umount2(2), statfs(2) and the new mount API (open_tree, mount_setattr,
move_mount) through libc: Python's os module has none of them."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 2
CLONE_FS = 0x200
TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
# struct statfs is 120 bytes on 64-bit Linux; f_type is its first field on every arch.
_STATFS_SIZE = 256


def mount(source: str, target: Path, fstype: str, flags: int, options: str) -> None:
    """Mounts `source` of type `fstype` on `target`; raises OSError."""
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags,
                   options.encode()) != 0:  # fmt: skip
        error = ctypes.get_errno()
        raise OSError(error, f"{fstype} mount on {target}: {os.strerror(error)}")


def unmount(path: Path) -> None:
    """Lazily unmounts `path` if something is mounted there."""
    if os.path.ismount(path) and _libc.umount2(str(path).encode(), MNT_DETACH) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"unmount {path}: {os.strerror(error)}")


def filesystem_magic(path: Path) -> int:
    """The f_type of the filesystem `path` is on (TMPFS_MAGIC, ...); raises OSError."""
    buffer = ctypes.create_string_buffer(_STATFS_SIZE)
    if _libc.statfs(str(path).encode(), buffer) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"statfs {path}: {os.strerror(error)}")
    return ctypes.c_long.from_buffer(buffer).value & 0xFFFFFFFF


_thread_state = threading.local()


@contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Runs the block in `path` as the calling thread's working directory: the thread first
    gets a working directory of its own (unshare(CLONE_FS)), so the process's and the other
    threads' stay where they are, and it goes back to where it was after."""
    if not getattr(_thread_state, "own_directory", False):
        if _libc.unshare(CLONE_FS) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"unshare(CLONE_FS): {os.strerror(error)}")
        _thread_state.own_directory = True
    previous = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(path)
        yield
    finally:
        os.fchdir(previous)
        os.close(previous)


# The new mount API (x86_64 and aarch64 share these numbers since Linux 5.2 / 5.12).
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_IDMAP = 0x100000


class _MountAttr(ctypes.Structure):
    _fields_ = (
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    )


def _check(result: int, what: str) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")
    return result


def mount_idmapped(source: Path, target: Path, userns_fd: int, readonly: bool = False) -> None:
    """Mounts a copy of the tree at `source` on `target` with its owners shifted by the
    user namespace `userns_fd` (an id mapped to host id H there shows as H); raises OSError
    (EINVAL or EOPNOTSUPP where the kernel or the filesystem cannot idmap)."""
    tree = _check(
        _libc.syscall(
            SYS_OPEN_TREE,
            AT_FDCWD,
            str(source).encode(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
        ),
        f"open_tree {source}",
    )
    try:
        attr = _MountAttr(
            MOUNT_ATTR_IDMAP | (MOUNT_ATTR_RDONLY if readonly else 0), 0, 0, userns_fd
        )
        _check(
            _libc.syscall(
                SYS_MOUNT_SETATTR,
                tree,
                b"",
                AT_EMPTY_PATH | AT_RECURSIVE,
                ctypes.byref(attr),
                ctypes.c_size_t(ctypes.sizeof(attr)),
            ),
            f"mount_setattr (idmap) {source}",
        )
        _check(
            _libc.syscall(
                SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, str(target).encode(), MOVE_MOUNT_F_EMPTY_PATH
            ),
            f"move_mount to {target}",
        )
    finally:
        os.close(tree)
