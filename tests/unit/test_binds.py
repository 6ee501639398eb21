"""Bind sources resolved beneath their allowed directory, and staged through a descriptor."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime import binds


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    """An allowed directory holding data/file.txt, beside a secret outside it."""
    (tmp_path / "allowed" / "data").mkdir(parents=True)
    (tmp_path / "allowed" / "data" / "file.txt").write_text("inside\n")
    (tmp_path / "secret").write_text("outside\n")
    return tmp_path / "allowed"


def opened(roots: binds.BindRoots, source: Path | str) -> str:
    """The real path of what `roots.open(source)` opened."""
    fd = roots.open(str(source))
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def refusal(roots: binds.BindRoots, source: Path | str) -> str:
    with pytest.raises(binds.BindRefused) as caught:
        opened(roots, source)
    return str(caught.value)


def test_a_source_under_an_allowed_directory_opens_and_one_outside_is_refused(
    allowed: Path,
) -> None:
    roots = binds.BindRoots([str(allowed)])
    assert opened(roots, allowed / "data") == str(allowed / "data")
    assert opened(roots, allowed) == str(allowed)
    assert opened(roots, f"{allowed}//./data/file.txt") == str(allowed / "data" / "file.txt")
    for outside in (allowed.parent / "secret", "/etc", f"{allowed}-sibling"):
        assert "not under a host path the agent allows" in refusal(roots, outside)


def test_a_component_swapped_for_a_symlink_out_is_refused(allowed: Path) -> None:
    roots = binds.BindRoots([str(allowed)])
    # Checked as a string while "x" did not exist; a job then made it a symlink.
    (allowed / "x").symlink_to("/etc")
    assert "leads out of" in refusal(roots, allowed / "x")
    assert "leads out of" in refusal(roots, allowed / "x" / "shadow")
    (allowed / "up").symlink_to("../..")
    assert "leads out of" in refusal(roots, allowed / "up" / "secret")
    assert not (allowed.parent.parent / "secret").exists()


def test_dot_dot_may_not_climb_out(allowed: Path) -> None:
    roots = binds.BindRoots([str(allowed)])
    assert opened(roots, f"{allowed}/data/../data") == str(allowed / "data")
    assert "leads out of" in refusal(roots, f"{allowed}/../secret")
    assert "leads out of" in refusal(roots, f"{allowed}/data/../../secret")


def test_symlinks_are_followed_only_while_they_stay_beneath(allowed: Path) -> None:
    roots = binds.BindRoots([str(allowed)])
    (allowed / "current").symlink_to("data")
    assert opened(roots, allowed / "current" / "file.txt") == str(allowed / "data" / "file.txt")
    # An absolute symlink is refused even when it names a path inside: beneath the allowed
    # directory, "/" would be the host's root.
    (allowed / "absolute").symlink_to(allowed / "data")
    assert "leads out of" in refusal(roots, allowed / "absolute")
    (allowed / "loop").symlink_to("loop")
    assert "symlink loop" in refusal(roots, allowed / "loop")


def test_magic_links_are_not_followed() -> None:
    # /proc/self/root is a magic link to the root: through it, /etc would be beneath.
    roots = binds.BindRoots(["/proc/self"])
    assert "magic link" in refusal(roots, "/proc/self/root/etc")
    assert "magic link" in refusal(roots, "/proc/self/cwd")


def test_the_allowed_directory_swapped_for_a_symlink_is_refused(allowed: Path) -> None:
    roots = binds.BindRoots([str(allowed)])
    allowed.rename(allowed.with_name("moved"))
    allowed.symlink_to("/etc")
    assert "reached through a symlink" in refusal(roots, allowed / "passwd")


def test_symlinks_in_the_configured_path_are_followed_once(allowed: Path) -> None:
    link = allowed.parent / "link"
    link.symlink_to(allowed)
    roots = binds.BindRoots([str(link)])
    # Named through the configured path or the real one, it is the same directory.
    assert opened(roots, link / "data") == str(allowed / "data")
    assert opened(roots, allowed / "data") == str(allowed / "data")


def test_a_source_is_resolved_beneath_the_outermost_allowed_directory(tmp_path: Path) -> None:
    outer = tmp_path / "srv"
    (outer / "in").mkdir(parents=True)
    roots = binds.BindRoots([str(outer / "in"), str(outer)])
    assert roots.locate(str(outer / "in" / "f")) == (str(outer), "in/f")
    assert roots.locate(str(outer)) == (str(outer), ".")
    # A job allowed to write in srv replaces srv/in with a symlink out.
    (outer / "in").rmdir()
    (outer / "in").symlink_to("/etc")
    assert "leads out of" in refusal(roots, outer / "in" / "passwd")


def test_missing_directories_are_made_beneath_with_an_explicit_mode(allowed: Path) -> None:
    roots = binds.BindRoots([str(allowed)])
    previous = os.umask(0o077)
    try:
        assert opened(roots, allowed / "new" / "deeper") == str(allowed / "new" / "deeper")
    finally:
        os.umask(previous)
    for made in (allowed / "new", allowed / "new" / "deeper"):
        assert stat.S_IMODE(made.stat().st_mode) == binds.SOURCE_DIR_MODE
    # Nothing is made through a symlink that leads out, nor where a dangling one stands.
    (allowed / "out").symlink_to(allowed.parent)
    assert "leads out of" in refusal(roots, allowed / "out" / "made-outside")
    assert not (allowed.parent / "made-outside").exists()
    (allowed / "dangling").symlink_to("/nonexistent-target")
    assert "leads out of" in refusal(roots, allowed / "dangling")
    assert not Path("/nonexistent-target").exists()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


@pytest.fixture
def bundle(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "bundle"
    (directory / binds.STAGING_DIR).mkdir(parents=True)
    yield directory
    binds.unstage_all(directory)


def mount_options(target: Path) -> list[str]:
    """The per-mount options of what is mounted at `target`, from mountinfo."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(target):
            return fields[5].split(",")
    return []


@needs_root
def test_a_staged_read_only_bind_is_read_only_and_goes_with_the_bundle(
    allowed: Path, bundle: Path
) -> None:
    roots = binds.BindRoots([str(allowed)])
    staging = bundle / binds.STAGING_DIR / "0"
    source = roots.open(str(allowed / "data"))
    try:
        binds.stage(source, staging, readonly=True)
    finally:
        os.close(source)
    assert (staging / "file.txt").read_text() == "inside\n"
    assert {"ro", "nosuid", "nodev"} <= set(mount_options(staging))
    with pytest.raises(OSError) as caught:
        (staging / "new").write_text("")
    assert caught.value.errno == errno.EROFS
    binds.unstage_all(bundle)
    assert mount_options(staging) == [] and not (staging / "file.txt").exists()


@needs_root
def test_a_file_is_staged_on_a_file_and_a_writable_bind_writes(allowed: Path, bundle: Path) -> None:
    roots = binds.BindRoots([str(allowed)])
    for index, (source_path, readonly) in enumerate(
        ((allowed / "data" / "file.txt", False), (allowed / "data", False))
    ):
        source = roots.open(str(source_path))
        try:
            binds.stage(source, bundle / binds.STAGING_DIR / str(index), readonly)
        finally:
            os.close(source)
    assert (bundle / binds.STAGING_DIR / "0").read_text() == "inside\n"
    assert "rw" in mount_options(bundle / binds.STAGING_DIR / "1")
    (bundle / binds.STAGING_DIR / "1" / "written").write_text("x")
    assert (allowed / "data" / "written").read_text() == "x"
