"""A thread's own working directory (for relative mount options)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

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
