"""The sealed copy of the runtime binary that the agent executes instead of the file."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.runtime.oci import OciRuntime
from agent.runtime.sealed import SealedBinary
from tests import tools

CONTENT_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def test_the_copy_is_sealed_linked_by_name_and_runs(tmp_path: Path) -> None:
    binary = shutil.which("true")
    assert binary is not None
    sealed = SealedBinary.copy_of(binary, tmp_path / "bin")
    assert sealed is not None
    try:
        link = Path(sealed.path)
        assert link == tmp_path / "bin" / "true" and link.is_symlink()
        assert link.read_bytes() == Path(binary).read_bytes()
        with link.open("rb") as copy:
            assert fcntl.fcntl(copy.fileno(), fcntl.F_GET_SEALS) & CONTENT_SEALS == CONTENT_SEALS
        with pytest.raises(PermissionError), link.open("r+b", buffering=0) as copy:
            copy.write(b"x")
        assert subprocess.run([sealed.path], check=False).returncode == 0
    finally:
        sealed.close()
    # Released: the copy and its link are gone.
    assert not Path(sealed.path).exists() and not Path(sealed.path).is_symlink()


def test_children_run_it_under_the_binary_name(tmp_path: Path) -> None:
    binary = shutil.which("sleep")
    assert binary is not None
    sealed = SealedBinary.copy_of(binary, tmp_path)
    assert sealed is not None
    child = subprocess.Popen([sealed.path, "30"])
    comm = Path(f"/proc/{child.pid}/comm")
    try:
        # Popen returns once exec has closed the child's close-on-exec fds, which the
        # kernel does a moment before it renames the process.
        deadline = time.monotonic() + 5
        while comm.read_text().strip() != "sleep" and time.monotonic() < deadline:
            time.sleep(0.001)
        assert comm.read_text().strip() == "sleep"
        assert os.readlink(f"/proc/{child.pid}/exe").startswith("/memfd:sleep")
    finally:
        child.kill()
        child.wait()
        sealed.close()


def test_a_second_copy_replaces_the_link(tmp_path: Path) -> None:
    binary = shutil.which("true")
    assert binary is not None
    first = SealedBinary.copy_of(binary, tmp_path)
    second = SealedBinary.copy_of(binary, tmp_path)
    assert first is not None and second is not None
    try:
        assert first.path == second.path
        first.close()
        assert subprocess.run([second.path], check=False).returncode == 0
    finally:
        second.close()


@pytest.mark.parametrize("runtime", ["youki", "runc"])
def test_the_runtime_does_not_copy_itself_again(tmp_path: Path, runtime: str) -> None:
    """youki (pentacle) and runc skip their own copy-and-re-exec when they already run
    from a sealed copy: the saving the copy is made for."""
    tools.require(runtime, "strace")
    oci = OciRuntime(str(shutil.which(runtime)), tmp_path / "state", tmp_path / "bin")
    try:
        assert oci.executable == str(tmp_path / "bin" / runtime)
        trace = tmp_path / "trace"
        traced = subprocess.run(
            [
                "strace",
                "-f",
                "-e",
                "trace=memfd_create,execve",
                "-o",
                str(trace),
                oci.executable,
                "--root",
                str(oci.root),
                "state",
                "absent",
            ],
            capture_output=True,
            check=False,
        )
        assert traced.returncode != 0  # no such container; what matters is how it got there
        calls = trace.read_text()
        assert "memfd_create" not in calls, calls
        assert calls.count("execve(") == 1, calls
    finally:
        oci.close()
    assert oci.executable == oci.binary
