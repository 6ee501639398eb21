"""Reading a file of an image (its /etc/passwd, say) without leaving the image.

An image is whatever its author packed: its /etc/passwd may be an absolute symlink (to the
host's file, once the agent follows it), a symlink to /dev/zero (endless), a FIFO (an open
that never returns) or a device whose very opening does something. So the path is
resolved with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS) relative to the image's
root, as the container itself would resolve it, and opened O_PATH first: only a regular
file is then opened for reading (through that descriptor, so it is the same file), and
only so much of it is read.

What the container reads at a path is the image's file only where nothing is mounted over
the way there: the runtime's /dev, /proc, /sys and /tmp, a job's volumes and binds. A path
that leads under one of those (a link to /dev/urandom beside a harmless regular file the
image ships at that path) is checked against the mounts themselves (mounted_over).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable
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
# As the kernel's limit on symlinks followed in one lookup (ELOOP past it).
MAX_SYMLINKS = 40


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
    runtime's devices), or larger than MAX_IMAGE_FILE_BYTES. The runtimes open /etc/passwd
    and /etc/group as the container starts, and block for good on a FIFO. Raises
    ImageFileError, or OSError."""
    try:
        found = _open_in_root(rootfs, path, os.O_PATH)
    except FileNotFoundError:
        try:
            os.close(_open_in_root(rootfs, path, os.O_PATH | os.O_NOFOLLOW))
        except FileNotFoundError:
            return
        raise ImageFileError(f"{path} in the image is a symlink to nothing in the image") from None
    try:
        size = _regular_size(found, path)
    finally:
        os.close(found)
    if size > MAX_IMAGE_FILE_BYTES:
        raise ImageFileError(f"{path} in the image is larger than {MAX_IMAGE_FILE_BYTES} bytes")


def mounted_over(rootfs: Path, path: str, mount_points: Iterable[str]) -> tuple[str, str] | None:
    """Whether resolving `path` inside the image at `rootfs` (as the container would, its
    links included) passes under one of `mount_points` (container paths): then the path it
    resolves to and the first such mount point; None when the way stays in the image's
    own files. A missing component ends the walk with the rest of the path joined on as it
    is written (a mount point may be made there). Raises ImageFileError on a loop of
    links, OSError."""
    points = [(point, posixpath.normpath("/" + point.lstrip("/"))) for point in mount_points]
    passed = _walk_in_root(rootfs, path)
    for here in passed:
        for point, under in points:
            if under != "/" and (here == under or here.startswith(under + "/")):
                return passed[-1], point
    return None


def _walk_in_root(rootfs: Path, path: str) -> list[str]:
    """Every path (absolute, as the container names it) that resolving `path` in the image
    passes through: each component reached, the targets of links included."""
    pending = _components(path)
    current: list[str] = []
    passed: list[str] = []
    links = 0
    while pending:
        name = pending.pop(0)
        if name == "..":
            current = current[:-1]
            continue
        here = "/" + "/".join([*current, name])
        passed.append(here)
        try:
            # The components so far are directories of the image, no links: the host path
            # names what the container's would.
            info = os.lstat(rootfs / here.lstrip("/"))
        except (FileNotFoundError, NotADirectoryError):
            rest = posixpath.normpath("/" + "/".join([*current, name, *pending]))
            return [*passed, rest]
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise ImageFileError(f"{path} in the image is a loop of symlinks")
            target = os.readlink(rootfs / here.lstrip("/"))
            if target.startswith("/"):
                current = []
            pending = [*_components(target), *pending]
            continue
        current.append(name)
    return passed


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


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
