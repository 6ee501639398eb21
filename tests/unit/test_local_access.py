"""The socket's directory and liveness check, the first admin token, and how clients find
the local agent and its token."""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path

import pytest
from jobagent_client import jobctl
from jobagent_client.local import DEFAULT_ADDRESS, find_address, find_token

from agent.api import admin_token, sockets
from agent.api.auth import Role
from agent.errors import InvalidSpec


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_socket_directory_is_made_private_or_group_readable(tmp_path: Path) -> None:
    sockets.prepare(tmp_path / "private" / "agent.sock", None)
    assert mode_of(tmp_path / "private") == 0o700
    sockets.prepare(tmp_path / "shared" / "agent.sock", os.getgid())
    assert mode_of(tmp_path / "shared") == 0o750
    assert (tmp_path / "shared").stat().st_gid == os.getgid()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o1777])
def test_a_directory_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "run"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(InvalidSpec, match="written by group or others"):
        sockets.prepare(directory / "agent.sock", None)


def test_a_live_socket_is_refused_and_a_stale_one_replaced(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(InvalidSpec, match=r"another process .* is serving on"):
            sockets.prepare(path, None)
        assert path.exists()
    # Closed without removing its file: what an agent killed by SIGKILL leaves.
    assert stat.S_ISSOCK(path.lstat().st_mode)
    sockets.prepare(path, None)
    assert not path.exists()


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    path.write_text("precious")
    with pytest.raises(InvalidSpec, match="not a socket"):
        sockets.prepare(path, None)
    assert path.read_text() == "precious"


def test_the_admin_token_is_made_once_private_and_kept_by_digest(tmp_path: Path) -> None:
    path = tmp_path / "admin.token"
    token = admin_token.load_or_create(path)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert mode_of(path) == 0o600 and path.read_text() == token + "\n"
    assert admin_token.load_or_create(path) == token
    assert [entry.name for entry in tmp_path.iterdir()] == ["admin.token"]
    table = admin_token.table(token)
    caller = table.caller(token)
    assert caller is not None and caller.role is Role.ADMIN
    assert table.caller(token[:-1]) is None
    assert token not in repr(vars(table))


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_an_admin_token_others_may_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "admin.token"
    path.write_text("x" * 43 + "\n")
    path.chmod(mode)
    with pytest.raises(InvalidSpec, match="remove it"):
        admin_token.load_or_create(path)


def test_an_admin_token_behind_a_symbolic_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("x" * 43 + "\n")
    elsewhere.chmod(0o600)
    (tmp_path / "admin.token").symlink_to(elsewhere)
    with pytest.raises(InvalidSpec, match="cannot read"):
        admin_token.load_or_create(tmp_path / "admin.token")


def test_an_empty_admin_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin.token"
    path.touch(mode=0o600)
    with pytest.raises(InvalidSpec, match="holds no token"):
        admin_token.load_or_create(path)


def test_clients_find_the_address_from_the_environment_or_the_default() -> None:
    assert find_address({}) == DEFAULT_ADDRESS == "unix:/run/jobagent/jobagent.sock"
    assert find_address({"JOBAGENT_ADDRESS": "127.0.0.1:1"}) == "127.0.0.1:1"


def test_clients_find_the_token_flag_first_then_environment_then_default(
    tmp_path: Path,
) -> None:
    given, named, default = (tmp_path / name for name in ("given", "named", "default"))
    for path in (given, named, default):
        path.write_text(f"{path.name}-token\n")
    env = {"JOBAGENT_TOKEN": "env-token", "JOBAGENT_TOKEN_FILE": str(named)}
    assert find_token(given, env, default) == "given-token"
    assert find_token(None, env, default) == "env-token"
    assert find_token(None, {"JOBAGENT_TOKEN_FILE": str(named)}, default) == "named-token"
    assert find_token(None, {}, default) == "default-token"
    assert find_token(None, {}, tmp_path / "missing") is None
    with pytest.raises(OSError):
        find_token(None, {"JOBAGENT_TOKEN_FILE": str(tmp_path / "missing")}, default)


def test_jobctl_names_a_token_file_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOBAGENT_TOKEN_FILE", str(tmp_path / "missing.token"))
    monkeypatch.delenv("JOBAGENT_TOKEN", raising=False)
    assert jobctl.main(["jobs"]) == 2
    assert f"cannot read the token: [Errno 2] No such file or directory: '{tmp_path}" in (
        capsys.readouterr().err
    )
