"""Every client (Python, Go, TypeScript, Rust) passes the same scenario against an agent that
takes calls only with a bearer token, over TCP and over a unix socket; without the token its
first call is refused."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import RUNTIMES, start_agent
from tests.e2e.harness import REPO, AgentProcess, Registry, free_port, sweep

CLIENTS = {
    "python": [sys.executable, str(REPO / "clients/python/examples/conformance.py")],
    "go": [str(REPO / "clients/go/bin/conformance")],
    "typescript": ["node", str(REPO / "clients/typescript/dist/examples/conformance.js")],
    "rust": [str(REPO / "clients/rust/target/release/examples/conformance")],
}
TOKEN = secrets.token_urlsafe(24)


def secured_agent(home: Path, listen: str, registry: Registry) -> AgentProcess:
    """An agent listening on `listen` that wants TOKEN (role admin) on every call."""
    tokens = home / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{name: conformance, role: admin, token: {TOKEN}}}\n")
    tokens.chmod(0o600)
    return start_agent(
        home / "data",
        RUNTIMES[0],
        registry,
        listen=listen,
        extra_args=("--tokens-file", str(tokens)),
    )


@pytest.fixture(scope="module")
def tcp_agent(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry
) -> Iterator[AgentProcess]:
    """The secured agent on a loopback port."""
    home = tmp_path_factory.mktemp("clients-tcp")
    agent = secured_agent(home, f"127.0.0.1:{free_port()}", registry)
    yield agent
    agent.stop()
    sweep(agent)


@pytest.fixture(scope="module")
def unix_agent(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry
) -> Iterator[AgentProcess]:
    """The secured agent on a unix socket (in a short directory: a socket's path has a
    limit of 107 bytes)."""
    home = tmp_path_factory.mktemp("clients-unix")
    with tempfile.TemporaryDirectory(prefix="jobagent-") as run:
        agent = secured_agent(home, f"unix:{run}/agent.sock", registry)
        yield agent
        agent.stop()
        sweep(agent)


def conformance(language: str, target: str, *flags: str, token: str | None) -> str:
    """Runs a language's conformance program; returns its output, failing on a non-zero
    exit."""
    program = CLIENTS[language]
    built = program[-1]
    assert (REPO / built).exists(), f"{built} is missing: `make clients-build` builds it"
    env = {name: value for name, value in os.environ.items() if name != "JOBAGENT_TOKEN"}
    if token is not None:
        env["JOBAGENT_TOKEN"] = token
    result = subprocess.run(
        [*program, *flags, target], capture_output=True, text=True, env=env, timeout=180
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("transport", ["tcp", "unix"])
@pytest.mark.parametrize("language", sorted(CLIENTS))
def test_the_client_passes_the_conformance_scenario_with_a_token(
    request: pytest.FixtureRequest, language: str, transport: str
) -> None:
    agent: AgentProcess = request.getfixturevalue(f"{transport}_agent")
    assert conformance(language, agent.target, token=TOKEN) == f"conformance ok: {language}"


@pytest.mark.parametrize("language", sorted(CLIENTS))
def test_without_the_token_the_first_call_is_unauthenticated(
    tcp_agent: AgentProcess, language: str
) -> None:
    output = conformance(language, tcp_agent.target, "--expect-unauthenticated", token=None)
    assert output == f"unauthenticated ok: {language}"
