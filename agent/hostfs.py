"""Files and directories the agent keeps on the host, with explicit modes.

What the agent keeps (the store, logs, images, what containers wrote, bundles) is for
root only: every file and directory gets its mode here, never the umask's, and the
processes the agent starts (conmon, the runtime, the image tools) run under CHILD_UMASK.
A job may write a set-uid file into a volume; its parents being 0700 is what keeps it
out of other host users' reach.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
READ_ONLY_FILE = 0o400
# The umask of every process the agent starts: what they create is theirs and root's only.
CHILD_UMASK = 0o077


def make_dir(path: Path, mode: int = PRIVATE_DIR) -> Path:
    """Makes `path` (missing parents PRIVATE_DIR) with exactly `mode`; an existing
    directory keeps its mode. Returns `path`."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        if not path.is_dir():
            raise
        return path
    except FileNotFoundError:
        make_dir(path.parent)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            return path
    # mkdir's mode went through the umask, which only ever removes bits.
    os.chmod(path, mode)
    return path


def tighten(path: Path, mode: int) -> bool:
    """Removes from an existing path's mode whatever `mode` does not allow (logged);
    True when it changed. A missing path is left alone."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return False
    current = stat.S_IMODE(status.st_mode)
    if stat.S_ISLNK(status.st_mode) or current & ~mode == 0:
        return False
    os.chmod(path, current & mode)
    log.warning(
        "tightened %s from %04o to %04o: other host users could reach it",
        path,
        current,
        current & mode,
    )
    return True


def secure_data_dir(path: Path) -> None:
    """Makes the data directory, or tightens an existing one: it and every entry directly
    in it (the store, logs, images, containers, volumes) become owner-only."""
    make_dir(path)
    tighten(path, PRIVATE_DIR)
    for entry in path.iterdir():
        tighten(entry, PRIVATE_DIR)


def write_file(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Writes `data` to `path` (replacing its content) with exactly `mode`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def read_small_file(path: str | Path) -> str:
    """The text of a small file (a kernel or runtime record), read with plain system calls:
    about a quarter of what Path.read_text costs, which counts on the event loop. Raises
    OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def create_file(path: Path, mode: int = PRIVATE_FILE) -> None:
    """Makes sure `path` exists as a file with exactly `mode`, keeping any content."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
