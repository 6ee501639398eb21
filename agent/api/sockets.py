"""The unix socket's place on disk: a directory only the agent may write, and one agent
per socket path."""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path

from agent.errors import InvalidSpec

log = logging.getLogger(__name__)

# How long a socket's listener has to accept the probe before the socket counts as taken.
PROBE_TIMEOUT_SECONDS = 1.0


def prepare(path: Path, gid: int | None) -> None:
    """Readies `path` for binding: its directory exists (made 0700, or 0750 of group `gid`)
    and is the agent's and writable by no one else, and a stale socket there is removed.
    Raises InvalidSpec when another process serves on `path` or the place is unsafe."""
    prepare_directory(path.parent, gid)
    clear_stale(path)


def prepare_directory(directory: Path, gid: int | None) -> None:
    """Makes `directory` when missing; refuses one that is not the agent's or that group or
    others may write: whoever may write it could swap the socket for their own."""
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        if gid is not None:
            os.chown(directory, -1, gid)
            os.chmod(directory, 0o750)
    info = directory.stat()
    where = f"the socket's directory {directory}"
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidSpec("listen", f"{where} is not a directory")
    if info.st_uid != os.geteuid():
        owner = f"uid {info.st_uid}, not the agent's user (uid {os.geteuid()})"
        raise InvalidSpec("listen", f"{where} belongs to {owner}")
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise InvalidSpec(
            "listen",
            f"{where} may be written by group or others (mode {mode:04o}): "
            "give the socket a directory of its own (0700, or 0750 with --socket-group)",
        )
    if gid is not None and not _group_may_enter(info, gid):
        log.warning(
            "group %d cannot reach sockets in %s (mode %04o, group %d)",
            gid,
            directory,
            mode,
            info.st_gid,
        )


def _group_may_enter(info: os.stat_result, gid: int) -> bool:
    if info.st_mode & stat.S_IXOTH:
        return True
    return info.st_gid == gid and bool(info.st_mode & stat.S_IXGRP)


def clear_stale(path: Path) -> None:
    """Removes a socket nothing serves on; raises InvalidSpec when something answers on it
    (another agent, most likely) or when `path` is not a socket."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise InvalidSpec("listen", f"{path} exists and is not a socket")
    if _answers(path):
        raise InvalidSpec(
            "listen",
            f"another process (an agent?) is serving on {path}: stop it, "
            "or give this agent another --listen",
        )
    log.info("removing the stale socket %s", path)
    path.unlink(missing_ok=True)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT_SECONDS)
        try:
            probe.connect(str(path))
        except OSError as error:
            # Refused: no listener, the socket is stale. Anything else (a full backlog that
            # times out, say) means something still holds it.
            return error.errno not in (errno.ECONNREFUSED, errno.ENOENT)
    return True


def set_owner(path: Path, mode: int, gid: int | None) -> None:
    """Gives a bound socket its group and mode (the directory keeps others out meanwhile)."""
    if gid is not None:
        os.chown(path, -1, gid)
    os.chmod(path, mode)
