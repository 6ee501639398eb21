"""A thread's own working directory (for relative mount options)."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from pathlib import Path

import pytest

from agent.runtime import syscalls


def test_a_threads_working_directory_moves_neither_the_process_nor_itself_for_good(
    tmp_path: Path,
) -> None:
    start = os.getcwd()
    seen: dict[str, str] = {}

    def in_a_thread() -> None:
        for _ in range(2):  # the second time the thread already has its own
            with syscalls.working_directory(tmp_path):
                Path("made-here").write_text("")
                seen["inside"] = os.getcwd()
                seen["process"] = os.readlink(f"/proc/{os.getpid()}/cwd")
            seen["after"] = os.getcwd()

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert seen == {"inside": str(tmp_path), "process": start, "after": start}
    assert (tmp_path / "made-here").exists() and os.getcwd() == start


def test_openat2_tries_again_when_a_rename_or_mount_races_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("x")
    real = syscalls._syscall
    raced = iter([True, True])

    def racing(what: str, number: int, *args: object) -> int:
        if next(raced, False):
            raise BlockingIOError(errno.EAGAIN, "raced")
        return real(what, number, *args)

    monkeypatch.setattr(syscalls, "_syscall", racing)
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        found = syscalls.openat2(root, "file", os.O_RDONLY, syscalls.RESOLVE_IN_ROOT)
        assert os.read(found, 1) == b"x"
        os.close(found)
        raced = iter([True] * syscalls.OPENAT2_RETRIES)
        with pytest.raises(OSError) as refused:
            syscalls.openat2(root, "file", os.O_RDONLY, syscalls.RESOLVE_IN_ROOT)
        assert refused.value.errno == errno.EAGAIN
    finally:
        os.close(root)


def _mounted_at(path: Path) -> int:
    """How many mounts /proc/self/mountinfo shows at `path`."""
    with open("/proc/self/mountinfo") as table:
        return sum(line.split()[4] == str(path) for line in table)


def test_unmount_takes_off_every_mount_stacked_on_a_point_a_same_filesystem_bind_included(
    tmp_path: Path,
) -> None:
    source, point = tmp_path / "source", tmp_path / "point"
    source.mkdir()
    point.mkdir()
    # A bind from the same filesystem: the point's device is its parent's, so comparing
    # devices (os.path.ismount) does not see it.
    syscalls.mount(str(source), point, "", syscalls.MS_BIND, "")
    assert not os.path.ismount(point)
    syscalls.mount("tmpfs", point, "tmpfs", 0, "size=1m")
    syscalls.mount("tmpfs", point, "tmpfs", 0, "size=1m")
    assert _mounted_at(point) == 3
    syscalls.unmount(point)
    assert _mounted_at(point) == 0
    syscalls.unmount(point)  # nothing left: done
    syscalls.unmount(tmp_path / "missing")


def test_unmount_does_not_follow_a_symlink_to_a_mount(tmp_path: Path) -> None:
    point, link = tmp_path / "point", tmp_path / "link"
    point.mkdir()
    link.symlink_to(point)
    syscalls.mount("tmpfs", point, "tmpfs", 0, "size=1m")
    try:
        syscalls.unmount(link)
        assert _mounted_at(point) == 1
    finally:
        syscalls.unmount(point)
    assert _mounted_at(point) == 0


class _FailingLibc:
    """A stand-in libc whose umount2 fails with `code` (leaving the mount where it is)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def umount2(self, target: bytes, flags: int) -> int:
        ctypes.set_errno(self.code)
        return -1


def test_unmount_reports_a_mount_that_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Endless:
        @staticmethod
        def umount2(target: bytes, flags: int) -> int:
            return 0

    monkeypatch.setattr(syscalls, "_libc", _FailingLibc(errno.EPERM))
    with pytest.raises(OSError) as refused:
        syscalls.unmount(tmp_path)
    assert refused.value.errno == errno.EPERM
    monkeypatch.setattr(syscalls, "_libc", Endless)
    with pytest.raises(OSError, match="still mounted"):
        syscalls.unmount(tmp_path)


def test_unmount_reports_a_mount_the_kernel_will_not_take_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # EINVAL is also the answer for a mount locked in a user namespace's copy of the
    # mounts: one on another device than its parent's is reported, never taken for gone.
    point = tmp_path / "point"
    point.mkdir()
    syscalls.mount("tmpfs", point, "tmpfs", 0, "size=1m")
    try:
        with monkeypatch.context() as patched:
            patched.setattr(syscalls, "_libc", _FailingLibc(errno.EINVAL))
            with pytest.raises(OSError, match="still mounted") as kept:
                syscalls.unmount(point)
            assert kept.value.errno == errno.EINVAL
            syscalls.unmount(tmp_path / "plain")  # not mounted: nothing to say
    finally:
        syscalls.unmount(point)
    assert _mounted_at(point) == 0
