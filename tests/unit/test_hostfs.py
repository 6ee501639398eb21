"""Files and directories the agent makes get their modes from it, never from the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import hostfs
from agent.store import Store


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The loosest umask there is, while the test runs."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("open_umask")
def test_directories_get_their_mode_and_missing_parents_are_private(tmp_path: Path) -> None:
    hostfs.make_dir(tmp_path / "a" / "b" / "volume", 0o755)
    assert mode_of(tmp_path / "a") == 0o700
    assert mode_of(tmp_path / "a" / "b") == 0o700
    assert mode_of(tmp_path / "a" / "b" / "volume") == 0o755


@pytest.mark.usefixtures("open_umask")
def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    (tmp_path / "kept").mkdir(0o750)
    hostfs.make_dir(tmp_path / "kept")
    assert mode_of(tmp_path / "kept") == 0o750


@pytest.mark.usefixtures("open_umask")
def test_files_are_written_with_exactly_their_mode(tmp_path: Path) -> None:
    hostfs.write_file(tmp_path / "payload", b"data", hostfs.READ_ONLY_FILE)
    assert mode_of(tmp_path / "payload") == 0o400
    assert (tmp_path / "payload").read_bytes() == b"data"
    (tmp_path / "loose").write_text("x")
    os.chmod(tmp_path / "loose", 0o666)
    hostfs.write_file(tmp_path / "loose", b"y")
    assert mode_of(tmp_path / "loose") == 0o600


def test_a_looser_data_directory_is_tightened_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "logs").mkdir()
    (data / "agent.db").write_text("")
    for path, mode in ((data, 0o755), (data / "logs", 0o775), (data / "agent.db", 0o644)):
        os.chmod(path, mode)
    (data / "link").symlink_to("/")
    hostfs.secure_data_dir(data)
    assert (mode_of(data), mode_of(data / "logs"), mode_of(data / "agent.db")) == (
        0o700,
        0o700,
        0o600,
    )
    assert "tightened" in caplog.text
    assert mode_of(Path("/")) & 0o005


@pytest.mark.usefixtures("open_umask")
def test_the_store_and_its_journal_are_the_owners_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "state" / "agent.db")
    try:
        assert mode_of(tmp_path / "state") == 0o700
        for name in ("agent.db", "agent.db-wal", "agent.db-shm"):
            assert mode_of(tmp_path / "state" / name) == 0o600, name
    finally:
        store.close()


def test_read_small_file_reads_to_the_end_and_raises_for_a_missing_file(tmp_path: Path) -> None:
    record = tmp_path / "record"
    text = "0123456789" * 10_000  # past one read's worth
    record.write_text(text)
    assert hostfs.read_small_file(record) == text
    assert hostfs.read_small_file(str(record)) == text
    with pytest.raises(FileNotFoundError):
        hostfs.read_small_file(tmp_path / "missing")
