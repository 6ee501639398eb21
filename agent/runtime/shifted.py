"""Ownership-shifted copies of image rootfs trees: the lower layer of a container with a
user namespace where the kernel or the image's filesystem cannot idmap a mount.

One copy per image and id range, made once beside the image's rootfs (so that it goes
with the image when the image is pruned) and shared by every container of that range."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from agent.runtime.userns import shift_tree

log = logging.getLogger(__name__)


class ShiftedCopies:
    """Makes and finds the shifted copies; safe to call from several threads."""

    def __init__(self) -> None:
        self._locks: dict[Path, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, rootfs: Path, start: int) -> Path:
        """The copy of `rootfs` whose owners are shifted by `start` (made on first use);
        raises OSError."""
        target = rootfs.with_name(f"{rootfs.name}-{start}")
        with self._guard:
            lock = self._locks.setdefault(target, threading.Lock())
        with lock:
            if target.is_dir():
                return target
            work = Path(tempfile.mkdtemp(dir=rootfs.parent, prefix=".shift-"))
            try:
                copy = work / "rootfs"
                # cp keeps owners, modes, hard links and extended attributes.
                done = subprocess.run(
                    ["cp", "-a", "--reflink=auto", str(rootfs), str(copy)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode != 0:
                    raise OSError(f"copying {rootfs}: {done.stderr.strip()}")
                shift_tree(copy, start)
                copy.rename(target)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            log.warning(
                "%s cannot be idmapped here: made a copy with its owners shifted by %d",
                rootfs,
                start,
            )
            return target
