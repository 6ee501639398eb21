"""A thread's own working directory (for relative mount options)."""

from __future__ import annotations

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
