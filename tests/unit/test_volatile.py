"""The volatile directory: kept on a tmpfs, mounted by the agent where the host has none."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.runtime import syscalls, volatile

OVERLAYFS_MAGIC = 0x794C7630

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


@pytest.fixture
def on_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on a filesystem that keeps its files (an overlay), whatever /tmp is."""
    syscalls.mount("tmpfs", tmp_path, "tmpfs", 0, "size=4m")
    for name in ("lower", "upper", "work", "merged"):
        (tmp_path / name).mkdir()
    merged = tmp_path / "merged"
    syscalls.mount(
        "overlay",
        merged,
        "overlay",
        0,
        f"lowerdir={tmp_path / 'lower'},upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'}",
    )
    try:
        assert syscalls.filesystem_magic(merged) == OVERLAYFS_MAGIC
        yield merged
    finally:
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            if line.split()[1].startswith(str(tmp_path)):
                syscalls.unmount(Path(line.split()[1]))


def mounts_at(path: Path) -> int:
    return sum(line.split()[1] == str(path) for line in Path("/proc/self/mounts").open())


def test_a_directory_on_disk_gets_a_tmpfs_of_its_own(on_disk: Path) -> None:
    directory = on_disk / "run" / "jobagent"
    (on_disk / "run").mkdir()
    (on_disk / "run" / "kept").write_text("the parent's files stay")

    assert volatile.ensure_tmpfs(directory) is True

    assert syscalls.filesystem_magic(directory) == syscalls.TMPFS_MAGIC
    assert mounts_at(directory) == 1
    (directory / "state").mkdir()
    assert syscalls.filesystem_magic(directory / "state") == syscalls.TMPFS_MAGIC
    assert (on_disk / "run" / "kept").read_text() == "the parent's files stay"


def test_a_second_start_keeps_the_tmpfs_and_what_it_holds(on_disk: Path) -> None:
    directory = on_disk / "jobagent"
    volatile.ensure_tmpfs(directory)
    (directory / "live").write_text("a running container's state")

    assert volatile.ensure_tmpfs(directory) is False

    assert mounts_at(directory) == 1
    assert (directory / "live").read_text() == "a running container's state"


def test_agents_starting_together_mount_it_once(on_disk: Path) -> None:
    directory = on_disk / "jobagent"
    with ThreadPoolExecutor(8) as pool:
        mounted = list(pool.map(lambda _: volatile.ensure_tmpfs(directory), range(8)))
    assert mounted.count(True) == 1
    assert mounts_at(directory) == 1


def test_a_directory_already_in_memory_is_left_as_it_is(tmp_path: Path) -> None:
    syscalls.mount("tmpfs", tmp_path, "tmpfs", 0, "size=1m")
    try:
        assert volatile.ensure_tmpfs(tmp_path / "jobagent") is False
        assert mounts_at(tmp_path / "jobagent") == 0
        assert syscalls.filesystem_magic(tmp_path / "jobagent") == syscalls.TMPFS_MAGIC
    finally:
        syscalls.unmount(tmp_path)
