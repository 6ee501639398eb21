"""A container's overlay: volatile where the kernel has the option, plain where it has not,
any other refusal reported as it is, and a writable layer never mounted twice."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime import bundle, syscalls
from tests.kernel import kernel_release

REAL_MOUNT = syscalls.mount
Layers = tuple[Path, Path, Path, Path]


needs_volatile = pytest.mark.skipif(
    kernel_release() < (5, 10), reason="overlayfs has the volatile option from Linux 5.10"
)


@pytest.fixture(autouse=True)
def fresh_volatile_option(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from a kernel not yet known to refuse the option."""
    monkeypatch.setattr(bundle, "_volatile", bundle._VolatileOption())


def layers_under(root: Path) -> Layers:
    """An image rootfs and the places of a container's upper, work and merged directories."""
    lower = root / "image"
    lower.mkdir(parents=True)
    (lower / "file").write_text("from the image\n")
    merged = root / "bundle" / "rootfs"
    merged.parent.mkdir()
    writable = root / "writable"
    return lower, writable / "upper", writable / "work", merged


@pytest.fixture
def layers(tmp_path: Path) -> Iterator[Layers]:
    """layers_under(tmp_path); whatever is mounted on merged is unmounted afterwards."""
    made = layers_under(tmp_path)
    yield made
    syscalls.unmount(made[3])


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


@needs_volatile
def test_a_containers_overlay_is_volatile(layers: Layers) -> None:
    lower, upper, work, merged = layers
    bundle.mount_overlay(lower, upper, work, merged)
    assert volatile(mount_options(merged))
    assert (merged / "file").read_text() == "from the image\n"
    (merged / "written").write_text("by the job\n")
    assert (upper / "written").read_text() == "by the job\n"


def test_a_writable_layer_is_never_mounted_twice(layers: Layers) -> None:
    lower, upper, work, merged = layers
    bundle.mount_overlay(lower, upper, work, merged)
    (merged / "written").write_text("by the job\n")
    syscalls.unmount(merged)
    with pytest.raises(OSError) as raised:
        bundle.mount_overlay(lower, upper, work, merged)
    assert raised.value.errno == errno.EEXIST
    assert "earlier overlay's work" in str(raised.value)
    assert not merged.is_mount()


def test_a_kernel_without_volatile_overlays_gets_plain_ones_and_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def mount_as_before_5_10(
        source: str, target: Path, fstype: str, flags: int, options: str
    ) -> None:
        calls.append(options)
        if "volatile" in options.split(","):
            # As a kernel may have marked the work directory before it refused: a mark
            # that refuses any later mount there, plain or not.
            mark = Path("work") / "work" / "incompat" / "volatile"
            mark.mkdir(parents=True)
            (mark / "dirty").touch()
            raise OSError(errno.EINVAL, "overlay mount: Invalid argument")
        REAL_MOUNT(source, target, fstype, flags, options)

    monkeypatch.setattr(syscalls, "mount", mount_as_before_5_10)
    first, second = layers_under(tmp_path / "first"), layers_under(tmp_path / "second")
    try:
        with caplog.at_level(logging.WARNING, logger="agent.runtime.bundle"):
            bundle.mount_overlay(*first)
            bundle.mount_overlay(*second)
        for _, _, _, merged in (first, second):
            assert not volatile(mount_options(merged))
            assert (merged / "file").read_text() == "from the image\n"
    finally:
        syscalls.unmount(first[3])
        syscalls.unmount(second[3])
    # Asked once: the second overlay is plain at once.
    assert ["volatile" in options for options in calls] == [True, False, False]
    warnings = [record for record in caplog.records if "volatile option" in record.message]
    assert len(warnings) == 1


@pytest.mark.parametrize("refusal", [errno.EPERM, errno.ENOSPC, errno.ENOENT])
def test_any_other_refusal_is_reported_without_a_second_try(
    layers: Layers, monkeypatch: pytest.MonkeyPatch, refusal: int
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


def test_an_einval_that_is_not_the_option_is_reported_and_the_option_kept(
    layers: Layers,
) -> None:
    # The work directory inside the upper one: the kernel refuses the overlay itself,
    # with or without the option.
    lower, upper, _, merged = layers
    with pytest.raises(OSError) as raised:
        bundle.mount_overlay(lower, upper, upper / "work", merged)
    assert raised.value.errno == errno.EINVAL
    assert not merged.is_mount()
    assert not bundle._volatile.refused
