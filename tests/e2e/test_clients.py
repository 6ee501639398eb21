"""Every client (Python, Go, TypeScript, Rust) passes the same scenario against the agent."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.harness import REPO, AgentProcess

CLIENTS = {
    "python": [sys.executable, str(REPO / "clients/python/examples/conformance.py")],
    "go": [str(REPO / "clients/go/bin/conformance")],
    "typescript": ["node", str(REPO / "clients/typescript/dist/examples/conformance.js")],
    "rust": [str(REPO / "clients/rust/target/release/examples/conformance")],
}


@pytest.mark.parametrize("language", sorted(CLIENTS))
def test_the_client_passes_the_conformance_scenario(agent: AgentProcess, language: str) -> None:
    program = CLIENTS[language]
    built = program[-1]
    assert (REPO / built).exists(), f"{built} is missing: `make clients-build` builds it"
    result = subprocess.run([*program, agent.target], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"conformance ok: {language}"
