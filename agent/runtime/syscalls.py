"""Linux system calls that Python's os module lacks, through libc: mount(2), umount2(2),
statfs(2), and the descriptor-based openat2(2), open_tree(2), mount_setattr(2) and
move_mount(2)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
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
UMOUNT_NOFOLLOW = 0x8
# unmount gives up on a mount point with more mounts stacked on it than this.
STACKED_MOUNTS_MAX = 16
CLONE_FS = 0x200
TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
# struct statfs is 120 bytes on 64-bit Linux; f_type is its first field on every arch.
_STATFS_SIZE = 256
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
# openat2(2) resolve flags.
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
# open_tree(2), mount_setattr(2) and move_mount(2).
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_IDMAP = 0x100000
MS_PRIVATE = 1 << 18
MOVE_MOUNT_F_EMPTY_PATH = 0x4
# These calls came after the syscall tables were unified: one number on every
# architecture (but alpha).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_OPENAT2 = 437
_SYS_MOUNT_SETATTR = 442
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount(source: str, target: Path, fstype: str, flags: int, options: str) -> None:
    """Mounts `source` of type `fstype` on `target`; raises OSError."""
    if (
        _libc.mount(source.encode(), str(target).encode(), fstype.encode(), flags, options.encode())
        != 0
    ):
        error = ctypes.get_errno()
        raise OSError(error, f"{fstype} mount on {target}: {os.strerror(error)}")


def unmount(path: Path) -> None:
    """Lazily unmounts whatever is mounted at `path`, each of a stack of mounts in turn,
    until the kernel answers that nothing is (EINVAL); a missing path is left alone, and a
    symlink there is not followed. Raises OSError when a mount stays.

    Asking the kernel, rather than comparing the devices of the path and its parent, also
    finds a bind mount from the same filesystem. EINVAL also answers for a mount that may
    not be unmounted here (one locked in a user namespace's copy of the mounts): a path on
    a device other than its parent's is still reported as mounted."""
    target = os.fsencode(path)
    for _ in range(STACKED_MOUNTS_MAX):
        if _libc.umount2(target, MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
            error = ctypes.get_errno()
            if error == errno.ENOENT:
                return
            if error != errno.EINVAL:
                raise OSError(error, f"unmount {path}: {os.strerror(error)}")
            if os.path.ismount(path):
                raise OSError(error, f"still mounted: {path}: {os.strerror(error)}")
            return
    raise OSError(errno.EBUSY, f"still mounted: {path} (over {STACKED_MOUNTS_MAX} mounts)")


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


def _syscall(what: str, number: int, *args: object) -> int:
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")
    return result


# How many times openat2 is tried while renames or mounts elsewhere race its resolution.
OPENAT2_RETRIES = 100


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat(2) with `resolve` flags (RESOLVE_BENEATH, ...); returns the new descriptor,
    always close-on-exec. Raises OSError (EXDEV: the path left the directory; ELOOP: a
    link the flags refuse)."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    size = ctypes.c_size_t(ctypes.sizeof(how))
    path_bytes = os.fsencode(path)
    for _ in range(OPENAT2_RETRIES):
        try:
            return _syscall(
                f"openat2 {path}",
                _SYS_OPENAT2,
                ctypes.c_int(dirfd),
                path_bytes,
                ctypes.byref(how),
                size,
            )
        except BlockingIOError:
            # EAGAIN: a rename or a mount anywhere on the host raced a ".." under
            # RESOLVE_BENEATH or RESOLVE_IN_ROOT; the kernel asks the caller to try again.
            continue
    raise OSError(errno.EAGAIN, f"openat2 {path}: raced by renames or mounts, try again")


def open_tree(dirfd: int, path: str, flags: int) -> int:
    """open_tree(2): a descriptor of the mount at `path` (or, with OPEN_TREE_CLONE, of a
    detached copy of it); raises OSError."""
    return _syscall(
        f"open_tree {path}",
        _SYS_OPEN_TREE,
        ctypes.c_int(dirfd),
        os.fsencode(path),
        ctypes.c_uint(flags),
    )


def mount_setattr(
    dirfd: int,
    path: str,
    flags: int,
    attr_set: int,
    attr_clr: int = 0,
    propagation: int = 0,
    userns_fd: int = 0,
) -> None:
    """mount_setattr(2): sets and clears MOUNT_ATTR_* flags (and the propagation type, when
    not 0; with MOUNT_ATTR_IDMAP, the user namespace `userns_fd`) of the mount at `path`;
    raises OSError."""
    attr = _MountAttr(attr_set, attr_clr, propagation, userns_fd)
    size = ctypes.c_size_t(ctypes.sizeof(attr))
    _syscall(
        f"mount_setattr {path}",
        _SYS_MOUNT_SETATTR,
        ctypes.c_int(dirfd),
        os.fsencode(path),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        size,
    )


def move_mount(from_dirfd: int, from_path: str, to_dirfd: int, to_path: str, flags: int) -> None:
    """move_mount(2): attaches a mount (a detached one from open_tree, say) at `to_path`;
    raises OSError."""
    _syscall(
        f"move_mount to {to_path}",
        _SYS_MOVE_MOUNT,
        ctypes.c_int(from_dirfd),
        os.fsencode(from_path),
        ctypes.c_int(to_dirfd),
        os.fsencode(to_path),
        ctypes.c_uint(flags),
    )


def umount2(path: Path, flags: int) -> None:
    """umount2(2) of `path` with `flags` (MNT_DETACH, ...); raises OSError (EINVAL: nothing
    is mounted there)."""
    if _libc.umount2(str(path).encode(), flags) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"unmount {path}: {os.strerror(error)}")


def mount_idmapped(source: Path, target: Path, userns_fd: int, readonly: bool = False) -> None:
    """Mounts a copy of the tree at `source` on `target` with its owners shifted by the
    user namespace `userns_fd` (an id mapped to host id H there shows as H); raises OSError
    (EINVAL or EOPNOTSUPP where the kernel or the filesystem cannot idmap)."""
    tree = open_tree(AT_FDCWD, str(source), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)
    try:
        attributes = MOUNT_ATTR_IDMAP | (MOUNT_ATTR_RDONLY if readonly else 0)
        mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, attributes, userns_fd=userns_fd)
        move_mount(tree, "", AT_FDCWD, str(target), MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(tree)
