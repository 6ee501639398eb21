"""A manager's close removes its data directory's volatile directories that nothing lives
in, and leaves those a running container (or an unrecorded exit) needs at the next start."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from agent.runtime.manager import ContainerManager, RuntimePaths


def paths_under(tmp_path: Path) -> RuntimePaths:
    volatile = tmp_path / "run" / "key"
    return RuntimePaths(
        images=tmp_path / "data" / "images",
        writable=tmp_path / "data" / "containers",
        volumes=tmp_path / "data" / "volumes",
        volatile=volatile,
        bundles=volatile / "bundles",
        runtime_state=volatile / "state" / "youki",
        exits=volatile / "exits",
        sockets=volatile / "attach",
        binaries=volatile / "bin",
    )


def manager_on(paths: RuntimePaths) -> ContainerManager:
    # A real binary: the manager links a sealed copy of it under `binaries`.
    return ContainerManager(paths, shutil.which("true") or "/bin/true")


def test_a_closed_manager_leaves_no_volatile_directory_behind(tmp_path: Path) -> None:
    paths = paths_under(tmp_path)
    manager = manager_on(paths)
    assert (paths.binaries / "true").is_symlink()
    manager.close()
    assert not paths.volatile.exists()
    assert paths.volatile.parent.is_dir()  # the root of all agents' volatile directories
    assert paths.images.is_dir() and paths.writable.is_dir() and paths.volumes.is_dir()
    # The next start makes them again.
    manager_on(paths).close()


def test_what_a_running_container_needs_stays(tmp_path: Path) -> None:
    paths = paths_under(tmp_path)
    manager = manager_on(paths)
    (paths.bundles / "ja-live").mkdir()
    (paths.runtime_state / "ja-live").mkdir()
    (paths.exits / "ja-ended").write_text("0")
    manager.close()
    assert (paths.bundles / "ja-live").is_dir()
    assert (paths.runtime_state / "ja-live").is_dir()
    assert (paths.exits / "ja-ended").read_text() == "0"
    assert not paths.sockets.exists() and not paths.binaries.exists()


def test_directories_outside_the_volatile_one_are_never_removed(tmp_path: Path) -> None:
    # The state root given elsewhere: its empty parent is not the manager's to remove.
    paths = paths_under(tmp_path)
    elsewhere = tmp_path / "elsewhere" / "state"
    paths = dataclasses.replace(paths, runtime_state=elsewhere)
    manager_on(paths).close()
    assert elsewhere.is_dir()
    assert not paths.volatile.exists()
