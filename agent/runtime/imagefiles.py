"""Reading a file of an image (its /etc/passwd, say) without leaving the image.

An image is whatever its author packed: its /etc/passwd may be an absolute symlink (to the
host's file, once the agent follows it), a symlink to /dev/zero (endless), a FIFO (an open
that never returns) or a device whose very opening does something. So the path is
resolved with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) relative to the image's
root, as the container itself would resolve it, and opened O_PATH first: only a regular
file is then opened for reading (through that descriptor, so it is the same file), and
only so much of it is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.runtime import syscalls

# No account table is anywhere near this; a larger file is refused, not cut.
MAX_IMAGE_FILE_BYTES = 1 << 20
_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class ImageFileError(ValueError):
    """A file of the image that is not a regular file, or too large, to read."""


def read_image_file(rootfs: Path, path: str, limit: int = MAX_IMAGE_FILE_BYTES) -> bytes:
    """The content of `path` (absolute, as the container sees it) in the image unpacked at
    `rootfs`; raises FileNotFoundError when there is no such file, ImageFileError when it
    is not a regular file or is larger than `limit`, OSError otherwise."""
    found = _open_in_root(rootfs, path, os.O_PATH)
    try:
        size = _regular_size(found, path)
        if size > limit:
            raise ImageFileError(f"{path} in the image is larger than {limit} bytes")
        # Reopening the O_PATH descriptor opens the very file that was checked.
        readable = os.open(f"/proc/self/fd/{found}", READ_FLAGS)
    finally:
        os.close(found)
    with os.fdopen(readable, "rb") as stream:
        content = stream.read(limit + 1)
    if len(content) > limit:  # it grew since fstat
        raise ImageFileError(f"{path} in the image is larger than {limit} bytes")
    return content


def check_image_file(rootfs: Path, path: str) -> None:
    """Refuses a `path` of the image that is there but is no regular file: a FIFO, a device,
    a symlink that leads nowhere in the image (in the container it could reach one of the
    runtime's devices). The runtimes open /etc/passwd and /etc/group as the container
    starts, and block for good on a FIFO. Raises ImageFileError, or OSError."""
    try:
        found = _open_in_root(rootfs, path, os.O_PATH)
    except FileNotFoundError:
        try:
            os.close(_open_in_root(rootfs, path, os.O_PATH | os.O_NOFOLLOW))
        except FileNotFoundError:
            return
        raise ImageFileError(f"{path} in the image is a symlink to nothing in the image") from None
    try:
        _regular_size(found, path)
    finally:
        os.close(found)


def _open_in_root(rootfs: Path, path: str, flags: int) -> int:
    root = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        resolve = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
        return syscalls.openat2(root, path.lstrip("/") or ".", flags, resolve)
    finally:
        os.close(root)


def _regular_size(fd: int, path: str) -> int:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise ImageFileError(f"{path} in the image is {kind}")
    return info.st_size
