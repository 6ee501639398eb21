"""One agent per address and per data directory: a second one fails at once, saying why;
`image-import` still works beside a running agent."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import RUNTIMES, running_agent
from tests.e2e.harness import AgentProcess, Registry, free_port

JOB = (
    "version: v1\ndeployment: single\nservices:\n  imported:\n    rtype: job\n"
    "    image: {name: 'imported/busybox:again'}\n    command: {entrypoint: [/bin/echo, again]}\n"
)


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[AgentProcess]:
    with running_agent(tmp_path_factory.mktemp("first") / "data", RUNTIMES[0], registry) as agent:
        yield agent


def second(agent: AgentProcess, data_dir: Path, listen: str) -> subprocess.CompletedProcess[str]:
    """Runs another agent to its end (it should end at once); plain TCP, as the first's."""
    return subprocess.run(
        agent.python(
            "serve",
            "--data-dir",
            str(data_dir),
            "--listen",
            listen,
            "--runtime",
            agent.runtime,
            "--insecure",
        ),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=agent.cwd,
    )


def test_a_second_agent_on_the_same_address_fails_at_once(
    first: AgentProcess, tmp_path: Path
) -> None:
    ended = second(first, tmp_path / "other", first.target)
    assert ended.returncode == 2, ended.stderr
    assert f"cannot listen on {first.target}" in ended.stderr
    assert "in use" in ended.stderr
    assert first.serving()


def test_a_second_agent_on_the_same_data_directory_fails_at_once(first: AgentProcess) -> None:
    assert first.process is not None
    ended = second(first, first.data_dir, f"127.0.0.1:{free_port()}")
    assert ended.returncode == 2, ended.stderr
    assert "is in use by another agent" in ended.stderr
    assert f"pid {first.process.pid}" in ended.stderr
    assert first.serving()


def test_image_import_works_while_the_agent_runs(first: AgentProcess) -> None:
    first.import_image(f"docker://{first.registry}/busybox:latest", "imported/busybox:again")
    with first.client() as client:
        client.register(JOB, replace=True)
        execution = client.wait(client.trigger("imported").id)
        assert execution.status == "completed", execution.message
        assert [line.message for line in client.logs(execution.id)] == ["again"]
