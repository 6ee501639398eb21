"""Faults: each ends the execution Failed with its reason, the agent keeps serving, and
nothing is left running or mounted."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobagent_client import JobAgentClient

from tests.e2e.conftest import start_agent
from tests.e2e.harness import (
    AgentProcess,
    Registry,
    free_port,
    settled_leftovers,
    sweep,
    wait_until,
)


def job(name: str, image: str = "busybox:latest", extra: str = "") -> str:
    return (
        f"version: v1\ndeployment: faults\nservices:\n  {name}:\n    rtype: job\n"
        f"    image: {{name: '{image}'}}\n{extra}    command: {{entrypoint: [/bin/echo, hi]}}\n"
    )


def fails(client: JobAgentClient, document: str, name: str) -> tuple[str, str]:
    client.register(document, replace=True)
    execution = client.wait(client.trigger(name).id)
    assert execution.status == "failed"
    # The agent still serves: a good job right after completes.
    client.register(job("healthy"), replace=True)
    assert client.wait(client.trigger("healthy").id).status == "completed"
    return execution.failure_reason, execution.message


def test_a_registry_that_is_down_fails_the_pull(client: JobAgentClient) -> None:
    image = f"127.0.0.1:{free_port()}/busybox:1"
    reason, message = fails(client, job("down", image), "down")
    assert reason == "image_pull"
    assert "connection refused" in message.lower()


def test_a_bundle_that_cannot_be_made_fails_at_create(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    reason, message = fails(client, job("ghost-user", extra="    user: ghost\n"), "ghost-user")
    assert reason == "create"
    assert "'ghost' is not in the image's /etc/passwd" in message
    paths = agent.paths
    wait_until(lambda: not any(paths.bundles.iterdir()) and not any(paths.writable.iterdir()),
               10, "no bundle or writable layer left")  # fmt: skip


@pytest.fixture
def fragile(
    tmp_path: Path, registry: Registry, agent: AgentProcess
) -> Iterator[tuple[AgentProcess, Path]]:
    """An agent whose runtime binary can be taken away and whose log disk is tiny."""
    binary = tmp_path / "bin" / agent.runtime
    binary.parent.mkdir()
    shutil.copy2(shutil.which(agent.runtime) or agent.runtime, binary)
    logs = tmp_path / "agent" / "logs"
    logs.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(logs)], check=True)
    own = start_agent(tmp_path / "agent", str(binary), registry)
    try:
        yield own, binary
    finally:
        own.stop()
        sweep(own)
        subprocess.run(["umount", "-l", str(logs)], check=False)


def test_a_missing_runtime_binary_fails_at_create(fragile: tuple[AgentProcess, Path]) -> None:
    own, binary = fragile
    binary.unlink()
    with own.client() as client:
        client.register(job("no-runtime"), replace=True)
        execution = client.wait(client.trigger("no-runtime").id)
        assert (execution.status, execution.failure_reason) == ("failed", "create")
        assert execution.message
        assert settled_leftovers(own, execution.container_id) == []


def test_a_full_log_disk_fails_at_create(fragile: tuple[AgentProcess, Path]) -> None:
    own, _ = fragile
    filler = own.data_dir / "logs" / "filler"
    with filler.open("wb") as file, pytest.raises(OSError):
        file.write(b"x" * (1 << 20))
    with own.client() as client:
        client.register(job("no-space"), replace=True)
        execution = client.wait(client.trigger("no-space").id)
        assert (execution.status, execution.failure_reason) == ("failed", "create")
        assert "space" in execution.message.lower()
        assert settled_leftovers(own, execution.container_id) == []


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A registry address that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in accepted:
        connection.close()


def test_cancel_works_while_pulling(client: JobAgentClient, blackhole: str) -> None:
    client.register(job("stuck-pull", f"{blackhole}/busybox:1"), replace=True)
    execution = client.trigger("stuck-pull")
    wait_until(lambda: client.get_execution(execution.id).status == "initializing", 10,
               "initializing")  # fmt: skip
    cancelled = client.cancel(execution.id)
    assert cancelled.status == "cancelled"


def test_cancel_works_during_init(client: JobAgentClient, agent: AgentProcess) -> None:
    steps = "    init:\n      steps:\n        - {id: nap, uses: init.sleep, with: {duration: 5m}}\n"
    client.register(job("napping", extra=steps), replace=True)
    execution = client.trigger("napping")
    events = client.watch(execution.id)
    for event in events:
        if event.type == "init_step_started":
            break
    cancelled = client.cancel(execution.id)
    assert cancelled.status == "cancelled"
    assert settled_leftovers(agent, execution.container_id) == []
