"""The agent's volatile directory: what must not outlive a reboot, kept in memory.

Bundles, the runtime's state, conmon's exit records and attach sockets describe live
processes: after a reboot they are stale, and on disk every container creates and
deletes a few dozen inodes (on an ext4 without a journal, each new inode is searched for
past the recently deleted ones, which made that churn a quarter of the node's CPU time at
full load). containerd and CRI-O keep the same things under /run for the same reasons; on
a host whose /run is not a tmpfs, the agent mounts one for itself.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from agent.hostfs import make_dir, tighten
from agent.runtime import syscalls

log = logging.getLogger(__name__)

VOLATILE_ROOT = Path("/run/jobagent")
# Each data directory's part below is 0700; this one only needs to be traversed (a unix
# socket of the agent's may live here for a group to reach).
ROOT_MODE = 0o711
# As systemd mounts /run: no set-uid programs or device nodes, a fifth of memory at most.
TMPFS_OPTIONS = f"mode={ROOT_MODE:04o},size=20%"


def ensure_tmpfs(directory: Path = VOLATILE_ROOT) -> bool:
    """Makes `directory` lie on a tmpfs, mounting one there unless it already does;
    True when this call mounted it. Raises OSError (not root, say)."""
    make_dir(directory, ROOT_MODE)
    tighten(directory, ROOT_MODE)
    if _in_memory(directory):
        return False
    # Agents starting together must not stack two mounts (the first one's files would
    # vanish under the second): the lock sits beside the directory, on the filesystem
    # that stays.
    lock_path = directory.with_name(f".{directory.name}.lock")
    with open(os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _in_memory(directory):
            return False
        syscalls.mount(
            "tmpfs", directory, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, TMPFS_OPTIONS
        )
    log.info("mounted a tmpfs on %s: its filesystem keeps files past a reboot", directory)
    return True


def _in_memory(directory: Path) -> bool:
    return syscalls.filesystem_magic(directory) in (syscalls.TMPFS_MAGIC, syscalls.RAMFS_MAGIC)
