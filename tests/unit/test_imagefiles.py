"""Files of an image are read inside its root: no escape, no endless or blocking reads."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from agent.domain import CommandSpec
from agent.runtime.bundle import resolve_process
from agent.runtime.imagefiles import (
    MAX_IMAGE_FILE_BYTES,
    ImageFileError,
    check_image_file,
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
    with pytest.raises(ValueError, match=r"look up 'app': /etc/passwd in the image is larger"):
        resolve_process(image, CommandSpec(), {}, rootfs)


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
