"""User namespaces that idmapped mounts take their mapping from, one per mapping, made
once and kept open (an open fd keeps a namespace alive)."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.domain import ID_RANGE_SIZE, IdRange

# How long a helper may take to enter its new user namespace.
UNSHARE_TIMEOUT = 5.0


@dataclass(frozen=True)
class IdMapping:
    """Ids `inside` to `inside + size - 1` of a namespace are host ids `outside` onwards.

    Through an idmapped mount with this mapping, a file owned by host id `inside + n` on
    disk shows as owned by `outside + n` (and a new file of `outside + n` is stored as
    `inside + n`)."""

    inside: int
    outside: int
    size: int = ID_RANGE_SIZE

    @classmethod
    def of(cls, id_range: IdRange) -> IdMapping:
        """The mapping of a container's user namespace: its 0.. are the range."""
        return cls(0, id_range.start, id_range.size)

    def line(self) -> str:
        """The line of a /proc/PID/uid_map (or gid_map) for this mapping."""
        return f"{self.inside} {self.outside} {self.size}\n"


class NamespaceCache:
    """Open fds of user namespaces, one per mapping, made on first use."""

    def __init__(self) -> None:
        self._fds: dict[IdMapping, int] = {}
        self._lock = threading.Lock()

    def fd(self, mapping: IdMapping) -> int:
        """An fd of a user namespace with this mapping (owned by the cache); raises OSError."""
        with self._lock:
            fd = self._fds.get(mapping)
            if fd is None:
                fd = self._fds[mapping] = make_namespace(mapping)
            return fd

    def close(self) -> None:
        """Closes every fd (a namespace ends with its last user)."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def make_namespace(mapping: IdMapping) -> int:
    """Makes a user namespace with `mapping` for its uids and gids and returns an fd of it.

    A helper process enters a new user namespace (a process with threads cannot itself);
    the agent, root in the parent namespace, writes its maps, opens it and ends the helper.
    """
    own = os.readlink("/proc/self/ns/user")
    helper = subprocess.Popen(
        ["unshare", "--user", "--", "sleep", "infinity"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        namespace = f"/proc/{helper.pid}/ns/user"
        deadline = time.monotonic() + UNSHARE_TIMEOUT
        while _namespace_of(namespace) in (own, ""):
            if helper.poll() is not None or time.monotonic() > deadline:
                raise OSError(f"cannot make a user namespace: {_failure(helper)}")
            time.sleep(0.001)
        for table in ("uid_map", "gid_map"):
            with open(f"/proc/{helper.pid}/{table}", "w") as file:
                file.write(mapping.line())
        return os.open(namespace, os.O_RDONLY | os.O_CLOEXEC)
    finally:
        helper.kill()
        helper.wait()


def _namespace_of(link: str) -> str:
    try:
        return os.readlink(link)
    except OSError:
        return ""


def _failure(helper: subprocess.Popen[bytes]) -> str:
    if helper.poll() is None or helper.stderr is None:
        return "the helper did not enter one in time"
    return helper.stderr.read().decode(errors="replace").strip() or f"exit {helper.returncode}"


def shift_tree(root: Path, outside: int) -> None:
    """Gives every file under `root` (itself included) owned by a host id below
    ID_RANGE_SIZE the same id in the range from `outside` (uid and gid alike), keeping
    set-uid and set-gid bits (which a chown clears). Files owned by other ids are left."""

    def shift(path: str, info: os.stat_result) -> None:
        uid = info.st_uid + outside if info.st_uid < ID_RANGE_SIZE else info.st_uid
        gid = info.st_gid + outside if info.st_gid < ID_RANGE_SIZE else info.st_gid
        if (uid, gid) == (info.st_uid, info.st_gid):
            return
        os.lchown(path, uid, gid)
        if not stat.S_ISLNK(info.st_mode):
            os.chmod(path, stat.S_IMODE(info.st_mode))

    shift(str(root), os.lstat(root))
    for directory, subdirectories, files in os.walk(root):
        for name in (*subdirectories, *files):
            path = os.path.join(directory, name)
            shift(path, os.lstat(path))
