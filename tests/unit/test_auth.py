"""Tokens files, roles of methods, and which listen addresses need TLS."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.api.auth import Role, TokenTable, bearer_token, required_role
from agent.config import AgentConfig, TlsFiles
from agent.errors import InvalidSpec


def test_tokens_are_kept_by_digest_and_matched_with_their_role(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"operator-secret-token").hexdigest()
    path = tmp_path / "tokens.yaml"
    path.write_text(
        "tokens:\n  - {name: ci, role: operator, sha256: " + digest + "}\n"
        "  - {name: root, role: admin, token: admin-secret-token}\n"
    )
    table = TokenTable.load(path)
    assert table.caller("operator-secret-token") is not None
    assert table.caller("operator-secret-token").role is Role.OPERATOR  # type: ignore[union-attr]
    assert table.caller("admin-secret-token").name == "root"  # type: ignore[union-attr]
    assert table.caller("operator-secret-tokeN") is None


@pytest.mark.parametrize(
    ("content", "field"),
    [
        ("tokens: []\n", "tokens_file"),
        ("tokens:\n  - {name: a, role: root, token: 0123456789abcdef}\n", "tokens[0].role"),
        ("tokens:\n  - {name: a, role: viewer, token: short}\n", "tokens[0].token"),
        ("tokens:\n  - {name: a, role: viewer}\n", "tokens[0]"),
        ("tokens:\n  - {name: a, role: viewer, sha256: abc}\n", "tokens[0].sha256"),
        ("tokens: [", "tokens_file"),
    ],
)
def test_a_bad_tokens_file_names_the_entry(tmp_path: Path, content: str, field: str) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(content)
    with pytest.raises(InvalidSpec) as caught:
        TokenTable.load(path)
    assert caught.value.field == field


def test_roles_of_methods() -> None:
    assert required_role("/grpc.health.v1.Health/Check") is None
    assert required_role("/grpc.health.v1.Health/Watch") is None
    assert required_role("/jobagent.v1.JobService/GetExecution") is Role.VIEWER
    assert required_role("/jobagent.v1.JobService/StreamLogs") is Role.VIEWER
    assert required_role("/jobagent.v1.JobService/TriggerJob") is Role.OPERATOR
    assert required_role("/jobagent.v1.JobService/CancelExecution") is Role.OPERATOR
    assert required_role("/jobagent.v1.JobService/RegisterJob") is Role.ADMIN
    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    assert required_role(reflection) is Role.VIEWER


def test_bearer_header() -> None:
    assert bearer_token((("authorization", "Bearer abc"),)) == "abc"
    assert bearer_token((("authorization", "bearer  abc "),)) == "abc"
    assert bearer_token((("authorization", "Basic abc"),)) is None
    assert bearer_token(None) is None


def test_tcp_needs_tokens_or_client_certificates_unless_insecure(tmp_path: Path) -> None:
    tokens, tls = tmp_path / "tokens.yaml", TlsFiles(tmp_path / "c", tmp_path / "k")
    mtls = TlsFiles(tmp_path / "c", tmp_path / "k", tmp_path / "ca")
    AgentConfig(listen=(f"unix:{tmp_path}/s",)).check_listen()
    for address in ("127.0.0.1:1", "[::1]:1", "localhost:1", "0.0.0.0:1"):
        for config in (AgentConfig(listen=(address,)), AgentConfig(listen=(address,), tls=tls)):
            with pytest.raises(InvalidSpec, match=r"--tokens-file.*--tls-client-ca.*--insecure"):
                config.check_listen()
        AgentConfig(listen=(address,), insecure=True).check_listen()
        AgentConfig(listen=(address,), tls=mtls).check_listen()
        AgentConfig(listen=(address,), tls=tls, tokens_file=tokens).check_listen()
    for address in ("127.0.0.1:1", "[::1]:1", "localhost:1"):
        AgentConfig(listen=(address,), tokens_file=tokens).check_listen()


def test_tokens_cross_the_network_in_plain_text_only_with_insecure(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.yaml"
    for address in ("0.0.0.0:1", "10.1.2.3:1", "agent.example:1"):
        with pytest.raises(InvalidSpec, match=r"not loopback.*--insecure"):
            AgentConfig(listen=(address,), tokens_file=tokens).check_listen()
        AgentConfig(listen=(address,), tokens_file=tokens, insecure=True).check_listen()


def test_listen_addresses_are_checked(tmp_path: Path) -> None:
    AgentConfig(listen=("unix:/" + "s" * 106,)).check_listen()
    for bad in ("unix:relative", "no-port", "", "unix:/" + "s" * 107):
        with pytest.raises(InvalidSpec):
            AgentConfig(listen=(bad,), insecure=True).check_listen()


def test_the_default_listener_is_the_agents_socket_and_tcp_tokens_follow_the_file() -> None:
    config = AgentConfig()
    assert config.listen == ("unix:/run/jobagent/jobagent.sock",)
    assert config.sockets == (Path("/run/jobagent/jobagent.sock"),)
    assert (config.socket_mode, config.socket_gid()) == (0o660, None)
    assert config.tcp_listen == () and not config.tcp_open
    assert config.admin_token_file == Path("/var/lib/jobagent/admin.token")
    both = AgentConfig(listen=("127.0.0.1:1", "unix:/s"), tokens_file=Path("t"))
    assert both.tcp_listen == ("127.0.0.1:1",) and both.tcp_needs_token


def test_an_unknown_socket_group_is_named() -> None:
    with pytest.raises(InvalidSpec) as caught:
        AgentConfig(socket_group="no-such-group-here").check()
    assert caught.value.field == "socket_group"
    assert AgentConfig(socket_group="root").socket_gid() == 0
