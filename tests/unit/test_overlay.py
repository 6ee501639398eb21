"""A container's overlay: volatile where the kernel has the option, plain where it has not,
and any other refusal reported as it is."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime import bundle, syscalls

REAL_MOUNT = syscalls.mount


@pytest.fixture
def layers(tmp_path: Path) -> Iterator[tuple[Path, Path, Path, Path]]:
    """An image rootfs and the places of a container's upper, work and merged directories;
    whatever is mounted on merged is unmounted afterwards."""
    lower = tmp_path / "image"
    lower.mkdir()
    (lower / "file").write_text("from the image\n")
    merged = tmp_path / "bundle" / "rootfs"
    merged.parent.mkdir()
    writable = tmp_path / "writable"
    yield lower, writable / "upper", writable / "work", merged
    syscalls.unmount(merged)


def mount_options(point: Path) -> list[str]:
    """The superblock options the kernel shows for the mount on `point`."""
    [line] = [
        line
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4] == str(point)
    ]
    return line.split(" - ")[1].split()[2].split(",")


def volatile(options: list[str]) -> bool:
    """Whether the options make the overlay volatile (shown as `fsync=volatile` since
    Linux 6.15, as `volatile` before)."""
    return "volatile" in options or "fsync=volatile" in options


def test_a_containers_overlay_is_volatile(layers: tuple[Path, Path, Path, Path]) -> None:
    lower, upper, work, merged = layers
    bundle.mount_overlay(lower, upper, work, merged)
    assert volatile(mount_options(merged))
    assert (merged / "file").read_text() == "from the image\n"
    (merged / "written").write_text("by the job\n")
    assert (upper / "written").read_text() == "by the job\n"


def test_a_kernel_without_volatile_overlays_gets_a_plain_one(
    layers: tuple[Path, Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def mount_as_before_5_10(
        source: str, target: Path, fstype: str, flags: int, options: str
    ) -> None:
        calls.append(options)
        if "volatile" in options.split(","):
            raise OSError(errno.EINVAL, "overlay mount: Invalid argument")
        REAL_MOUNT(source, target, fstype, flags, options)

    monkeypatch.setattr(syscalls, "mount", mount_as_before_5_10)
    lower, upper, work, merged = layers
    bundle.mount_overlay(lower, upper, work, merged)
    assert len(calls) == 2
    assert not volatile(mount_options(merged))
    assert (merged / "file").read_text() == "from the image\n"


@pytest.mark.parametrize("refusal", [errno.EPERM, errno.ENOSPC, errno.ENOENT])
def test_any_other_refusal_is_reported_without_a_second_try(
    layers: tuple[Path, Path, Path, Path], monkeypatch: pytest.MonkeyPatch, refusal: int
) -> None:
    calls: list[str] = []

    def refusing(source: str, target: Path, fstype: str, flags: int, options: str) -> None:
        calls.append(options)
        raise OSError(refusal, "overlay mount: refused")

    monkeypatch.setattr(syscalls, "mount", refusing)
    lower, upper, work, merged = layers
    with pytest.raises(OSError) as raised:
        bundle.mount_overlay(lower, upper, work, merged)
    assert raised.value.errno == refusal
    assert len(calls) == 1
    assert not merged.is_mount()


def test_an_einval_that_is_not_the_option_is_reported(
    layers: tuple[Path, Path, Path, Path],
) -> None:
    # The work directory inside the upper one: the kernel refuses the overlay itself,
    # with or without the option.
    lower, upper, _, merged = layers
    with pytest.raises(OSError) as raised:
        bundle.mount_overlay(lower, upper, upper / "work", merged)
    assert raised.value.errno == errno.EINVAL
    assert not merged.is_mount()
