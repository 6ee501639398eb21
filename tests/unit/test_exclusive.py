"""One agent per data directory and address; the image store's lock across processes."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.exclusive import AlreadyServing, DataDirLock
from agent.runtime.storelock import StoreLock

HOLD = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
    "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(float(sys.argv[2]))"
)


def test_a_second_lock_on_a_data_directory_names_the_holder(tmp_path: Path) -> None:
    lock = DataDirLock.acquire(tmp_path / "data")
    assert stat.S_IMODE(lock.path.stat().st_mode) == 0o600
    assert lock.path.read_text().strip() == str(os.getpid())
    # flock is per open file: a second open in this process stands for another agent.
    with pytest.raises(AlreadyServing, match=f"pid {os.getpid()}"):
        DataDirLock.acquire(tmp_path / "data")
    lock.release()
    DataDirLock.acquire(tmp_path / "data").release()


def test_a_symlink_in_place_of_the_lock_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "agent.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        DataDirLock.acquire(tmp_path / "data")
    assert not (tmp_path / "elsewhere").exists()


async def test_the_store_lock_waits_for_another_process(tmp_path: Path) -> None:
    path = tmp_path / "lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), "0.5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        lock = StoreLock(path)
        started = asyncio.get_running_loop().time()
        async with lock:
            waited = asyncio.get_running_loop().time() - started
        assert waited >= 0.3
        async with lock:  # uncontended: at once
            pass
    finally:
        holder.wait(5)
