"""Bind mounts of host paths: resolved at each run beneath their allowed directory, and
mounted through the descriptor that resolution opened.

A bind source is a path string, checked against the allowlist when the job is registered;
what the path names can change after that (a job writing under an allowed directory can
turn a component of another job's source into a symlink to /etc). So at each run the
source is opened with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) relative to a
descriptor of its allowed directory, and that descriptor, not the path, is cloned into a
detached mount (open_tree), made nosuid, nodev, private and, for a read-only bind,
read-only before anyone can see it (mount_setattr), and moved to a staging path in the
bundle (move_mount). The runtime binds the staging path, which nothing else can change.

The allowed directories are the operator's: each is taken at its real path when the agent
starts (symlinks in the configured path, such as /var/run, followed once) and opened at
each run without following any symlink, so a directory swapped for a symlink later is
refused. A source is resolved beneath the outermost allowed directory that holds it: a job
allowed to write in /srv could otherwise swap an allowed /srv/in for a symlink.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.runtime import syscalls

# Where a bundle keeps its staged bind mounts, one per storage entry index.
STAGING_DIR = "binds"
# Directories made for a missing source get this mode (as containerd makes them).
SOURCE_DIR_MODE = 0o755
BENEATH = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_MAGICLINKS


class BindRefused(ValueError):
    """A bind source that is not under an allowed directory, or leads out of it."""


@dataclass(frozen=True)
class _Root:
    real: tuple[str, ...]
    # The path components a source may start with to fall under this root.
    names: tuple[tuple[str, ...], ...]


def _parts(path: str) -> tuple[str, ...]:
    return tuple(part for part in path.split("/") if part not in ("", "."))


def _path(parts: Sequence[str]) -> str:
    return "/" + "/".join(parts)


class BindRoots:
    """The host directories that jobs may bind from (the agent's --bind-allow)."""

    def __init__(self, allowlist: Sequence[str]) -> None:
        roots = []
        for entry in allowlist:
            real = _parts(os.path.realpath(entry))
            roots.append(_Root(real, (real, _parts(os.path.normpath(entry)))))
        self._roots = tuple(sorted(roots, key=lambda root: len(root.real)))

    def locate(self, source: str) -> tuple[str, str]:
        """The allowed directory to resolve `source` beneath, and the rest of the path
        relative to it ("." for the directory itself); raises BindRefused."""
        wanted = _parts(source)
        for root in self._roots:
            for name in root.names:
                if wanted[: len(name)] == name:
                    full = root.real + wanted[len(name) :]
                    outer = next(r for r in self._roots if full[: len(r.real)] == r.real)
                    return _path(outer.real), "/".join(full[len(outer.real) :]) or "."
        raise BindRefused(f"{source} is not under a host path the agent allows for bind mounts")

    def open(self, source: str) -> int:
        """An O_PATH descriptor of `source`, resolved beneath its allowed directory without
        leaving it (missing directories are made there); raises BindRefused."""
        root_path, relative = self.locate(source)
        flags = os.O_PATH | os.O_DIRECTORY
        try:
            root = syscalls.openat2(
                syscalls.AT_FDCWD, root_path, flags, syscalls.RESOLVE_NO_SYMLINKS
            )
        except OSError as error:
            why = (
                "is now reached through a symlink"
                if error.errno == errno.ELOOP
                else f"cannot be opened: {os.strerror(error.errno or 0)}"
            )
            raise BindRefused(f"the allowed directory {root_path} {why}") from None
        try:
            return open_beneath(root, relative)
        except OSError as error:
            raise BindRefused(_refusal(source, root_path, error)) from None
        finally:
            os.close(root)


def _refusal(source: str, root: str, error: OSError) -> str:
    if error.errno == errno.EXDEV:
        return f"{source} leads out of {root}, the allowed directory it is under"
    if error.errno == errno.ELOOP:
        return f"{source} goes through a symlink loop or a /proc magic link"
    return f"{source} cannot be opened: {os.strerror(error.errno or 0)}"


def open_beneath(root: int, relative: str) -> int:
    """An O_PATH descriptor of `relative`, resolved beneath the directory `root` (symlinks
    followed only while they stay beneath it, no /proc magic links); directories missing
    on the way are made beneath it. Raises OSError."""
    try:
        return syscalls.openat2(root, relative, os.O_PATH, BENEATH)
    except FileNotFoundError:
        _make_directories(root, relative.split("/"))
    return syscalls.openat2(root, relative, os.O_PATH, BENEATH)


def _make_directories(root: int, parts: list[str]) -> None:
    """Makes each missing directory of `parts` beneath `root`: mkdirat never follows a
    symlink in the name it makes, and each parent is opened beneath `root` again."""
    for depth in range(1, len(parts) + 1):
        try:
            os.close(syscalls.openat2(root, "/".join(parts[:depth]), os.O_PATH, BENEATH))
            continue
        except FileNotFoundError:
            pass
        parent = syscalls.openat2(
            root, "/".join(parts[: depth - 1]) or ".", os.O_PATH | os.O_DIRECTORY, BENEATH
        )
        try:
            try:
                os.mkdir(parts[depth - 1], SOURCE_DIR_MODE, dir_fd=parent)
            except FileExistsError:  # made meanwhile, or a dangling symlink: opened below
                continue
            made = syscalls.openat2(
                parent, parts[depth - 1], os.O_RDONLY | os.O_DIRECTORY, syscalls.RESOLVE_NO_SYMLINKS
            )
            try:
                os.fchmod(made, SOURCE_DIR_MODE)
            finally:
                os.close(made)
        finally:
            os.close(parent)


def stage(source: int, staging: Path, readonly: bool) -> None:
    """Mounts what the descriptor `source` names (with what is mounted under it) at
    `staging`, which is made here: nosuid, nodev, private, and read-only if `readonly`,
    all set on the detached copy before it is attached. Raises OSError."""
    if stat.S_ISDIR(os.fstat(source).st_mode):
        staging.mkdir(mode=0o700)
    else:
        os.close(os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    tree = syscalls.open_tree(
        source,
        "",
        syscalls.OPEN_TREE_CLONE
        | syscalls.OPEN_TREE_CLOEXEC
        | syscalls.AT_EMPTY_PATH
        | syscalls.AT_RECURSIVE,
    )
    try:
        attributes = syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV
        if readonly:
            attributes |= syscalls.MOUNT_ATTR_RDONLY
        syscalls.mount_setattr(
            tree,
            "",
            syscalls.AT_EMPTY_PATH | syscalls.AT_RECURSIVE,
            attributes,
            propagation=syscalls.MS_PRIVATE,
        )
        syscalls.move_mount(
            tree, "", syscalls.AT_FDCWD, str(staging), syscalls.MOVE_MOUNT_F_EMPTY_PATH
        )
    finally:
        os.close(tree)


def unstage_all(bundle: Path) -> None:
    """Detaches every bind staged in `bundle` (what is not mounted is left alone)."""
    try:
        entries = list((bundle / STAGING_DIR).iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            syscalls.umount2(entry, syscalls.MNT_DETACH)
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.ENOENT):
                raise
