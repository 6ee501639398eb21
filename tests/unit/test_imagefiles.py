"""Files of an image are read inside its root: no escape, no endless or blocking reads."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from agent.domain import CommandSpec
from agent.runtime.bundle import ProcessSpec, build_config, resolve_process
from agent.runtime.imagefiles import (
    MAX_IMAGE_FILE_BYTES,
    ImageFileError,
    check_image_file,
    mounted_over,
    read_image_file,
)
from agent.runtime.images import ImageConfig

PASSWD = "root:x:0:0::/:/bin/sh\napp:x:4242:4343::/:/bin/sh\n"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    return root


def test_a_regular_file_is_read(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    assert read_image_file(rootfs, "/etc/passwd") == PASSWD.encode()
    # ".." stops at the image's root, as it does in the container.
    assert read_image_file(rootfs, "/../../etc/passwd") == PASSWD.encode()


def test_an_absolute_symlink_resolves_inside_the_image(rootfs: Path, tmp_path: Path) -> None:
    # The same path on the host holds other content: that must not be what is read.
    host_copy = tmp_path / "accounts"
    host_copy.write_text("app:x:1:1::/:/bin/sh\n")
    inside = rootfs / str(host_copy).lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_text(PASSWD)
    (rootfs / "etc" / "passwd").symlink_to(host_copy)
    assert read_image_file(rootfs, "/etc/passwd") == PASSWD.encode()
    (rootfs / "etc" / "group").symlink_to("../../../../../../etc/hostname")
    with pytest.raises(FileNotFoundError):
        read_image_file(rootfs, "/etc/group")


def test_a_symlink_to_dev_zero_is_not_read_endlessly(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").symlink_to("/dev/zero")
    with pytest.raises(FileNotFoundError):  # the image has no /dev/zero
        read_image_file(rootfs, "/etc/passwd")
    with pytest.raises(ImageFileError, match="a symlink to nothing in the image"):
        check_image_file(rootfs, "/etc/passwd")


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_a_device_in_the_image_is_refused(rootfs: Path) -> None:
    (rootfs / "dev").mkdir()
    os.mknod(rootfs / "dev" / "zero", 0o666 | 0o020000, os.makedev(1, 5))
    (rootfs / "etc" / "passwd").symlink_to("/dev/zero")
    with pytest.raises(ImageFileError, match="is a character device"):
        read_image_file(rootfs, "/etc/passwd")


def test_a_fifo_is_refused_without_blocking(rootfs: Path) -> None:
    os.mkfifo(rootfs / "etc" / "passwd")
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_image_file(rootfs, "/etc/passwd")
        except BaseException as error:  # handed to the test's thread
            outcome.append(error)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert isinstance(outcome[0], ImageFileError) and "a FIFO" in str(outcome[0])


def test_a_directory_and_a_large_file_are_refused(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").mkdir()
    with pytest.raises(ImageFileError, match="a directory"):
        read_image_file(rootfs, "/etc/passwd")
    (rootfs / "etc" / "group").write_bytes(b"x" * 101)
    with pytest.raises(ImageFileError, match="larger than 100 bytes"):
        read_image_file(rootfs, "/etc/group", limit=100)
    assert read_image_file(rootfs, "/etc/group", limit=101) == b"x" * 101


def test_magic_links_are_not_followed() -> None:
    # Inside /proc/self, "root" is a magic link to the host's root.
    with pytest.raises(OSError) as caught:
        read_image_file(Path("/proc/self"), "/root/etc/passwd")
    assert caught.value.errno == errno.ELOOP


def test_a_user_name_resolves_from_the_images_own_tables(rootfs: Path, tmp_path: Path) -> None:
    (rootfs / "accounts").write_text(PASSWD)
    (rootfs / "etc" / "passwd").symlink_to("/accounts")
    (rootfs / "etc" / "group").write_text("staff:x:77:\n")
    image = ImageConfig(cmd=("/x",), user="app:staff")
    process = resolve_process(image, CommandSpec(), {}, rootfs)
    assert (process.uid, process.gid) == (4242, 77)
    (rootfs / "accounts").write_bytes(b"x" * (MAX_IMAGE_FILE_BYTES + 1))
    # The runtime reads it too: refused whoever the job runs as.
    with pytest.raises(ValueError, match=r"^/etc/passwd in the image is larger"):
        resolve_process(image, CommandSpec(), {}, rootfs)
    with pytest.raises(ValueError, match=r"^/etc/passwd in the image is larger"):
        resolve_process(ImageConfig(cmd=("/x",)), CommandSpec(), {}, rootfs)


@pytest.mark.parametrize("user", ["", "0", "app"])
def test_account_tables_the_runtime_would_block_on_are_refused(rootfs: Path, user: str) -> None:
    image = ImageConfig(cmd=("/x",), user=user)
    os.mkfifo(rootfs / "etc" / "group")
    with pytest.raises(ValueError, match="/etc/group in the image is a FIFO"):
        resolve_process(image, CommandSpec(), {}, rootfs)
    (rootfs / "etc" / "group").unlink()
    # In the container a link to nothing in the image could reach the runtime's devices.
    (rootfs / "etc" / "passwd").symlink_to("/dev/stdin")
    with pytest.raises(ValueError, match="/etc/passwd in the image is a symlink to nothing"):
        resolve_process(image, CommandSpec(), {}, rootfs)


def test_an_image_without_account_tables_runs_as_a_number(rootfs: Path) -> None:
    process = resolve_process(ImageConfig(cmd=("/x",), user="7:8"), CommandSpec(), {}, rootfs)
    assert (process.uid, process.gid) == (7, 8)


def config_for(rootfs: Path, *destinations: str) -> None:
    """Builds the container's config.json over `rootfs`, with a job's volume at each of
    `destinations`."""
    volumes = [
        {"destination": target, "type": "bind", "source": "/v", "options": ["rbind"]}
        for target in destinations
    ]
    build_config(ProcessSpec(args=("/x",), env=(), cwd="/"), rootfs, "h", "/j/c", mounts=volumes)


def test_a_passwd_linked_to_a_runtime_device_beside_a_harmless_file_is_refused(
    rootfs: Path,
) -> None:
    """The attack: the image ships a regular /dev/urandom and links /etc/passwd to it. In
    the image the link reaches a regular file; in the container /dev is the runtime's
    tmpfs and the link its endless /dev/urandom, which the runtime reads (for HOME)
    before the container is created: the create never ends."""
    (rootfs / "dev").mkdir()
    (rootfs / "dev" / "urandom").write_text(PASSWD)
    (rootfs / "etc" / "passwd").symlink_to("/dev/urandom")
    check_image_file(rootfs, "/etc/passwd")  # a regular file, as far as the image goes
    with pytest.raises(
        ValueError,
        match=r"^/etc/passwd in the image leads to /dev/urandom, under /dev, where the "
        r"container has a tmpfs mount of its own",
    ):
        config_for(rootfs)


@pytest.mark.parametrize(
    ("link", "reached", "point"),
    [
        ("../proc/self/fd/0", "/proc/self/fd/0", "/proc"),
        ("/sys/kernel/x", "/sys/kernel/x", "/sys"),
        ("../tmp/passwd", "/tmp/passwd", "/tmp"),
        ("/dev/shm/x", "/dev/shm/x", "/dev"),
    ],
)
def test_account_tables_that_lead_under_the_runtimes_mounts_are_refused(
    rootfs: Path, link: str, reached: str, point: str
) -> None:
    """Links to /proc, /sys, /tmp or below /dev: what the image has there (nothing, here)
    is not what the runtime reads in the container."""
    (rootfs / "etc" / "group").symlink_to(link)
    with pytest.raises(ValueError, match=f"^/etc/group in the image leads to {reached}, "):
        config_for(rootfs)
    assert mounted_over(rootfs, "/etc/group", ["/proc", "/dev", "/sys", "/tmp"]) == (
        reached,
        point,
    )


def test_account_tables_under_a_jobs_volume_are_refused(rootfs: Path) -> None:
    """A job that mounts a volume over /etc (or wherever its tables lead) has the runtime
    read the volume's files: an earlier run may have left a FIFO there."""
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    with pytest.raises(ValueError, match=r"leads to /etc/passwd, under /etc/, where the contai"):
        config_for(rootfs, "/etc/")
    (rootfs / "etc" / "group").symlink_to("/srv/tables/group")
    with pytest.raises(ValueError, match=r"^/etc/group in the image leads to /srv/tables/group"):
        config_for(rootfs, "/srv")
    # A directory that is itself a link is followed as the kernel would.
    (rootfs / "etc" / "group").unlink()
    (rootfs / "opt").mkdir()
    (rootfs / "opt" / "group").write_text("staff:x:77:\n")
    (rootfs / "tables").symlink_to("etc/../opt")
    (rootfs / "etc" / "group").symlink_to("/tables/group")
    config_for(rootfs, "/srv", "/tables.d")
    with pytest.raises(ValueError, match=r"^/etc/group in the image leads to /opt/group, under"):
        config_for(rootfs, "/opt")


def test_account_tables_beside_mounts_or_missing_are_accepted(rootfs: Path) -> None:
    """Mounts elsewhere, even on a path that only begins like the table's, change nothing;
    neither does an image without tables."""
    config_for(rootfs, "/etc/ssl", "/devices", "/etc/passwd.d")
    (rootfs / "etc" / "passwd").write_text(PASSWD)
    config_for(rootfs, "/etc/ssl", "/devices", "/etc/passwd.d")
    assert mounted_over(rootfs, "/etc/passwd", ["/etc/ssl", "/"]) is None


def test_a_loop_of_links_is_refused_without_hanging(rootfs: Path) -> None:
    (rootfs / "etc" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="/etc/passwd in the image is a loop of symlinks"):
        config_for(rootfs)
