"""A registry that never answers holds up only the jobs of its own images."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from jobagent_client import JobAgentClient

from tests.e2e.conftest import RUNTIMES, running_agent
from tests.e2e.harness import Registry, wait_until

PULL_TIMEOUT = 30


@pytest.fixture
def silent_registry() -> Iterator[str]:
    """host:port of a TCP listener on 127.0.0.1 that takes connections (the kernel
    completes them) and never reads or writes a byte."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def register(client: JobAgentClient, name: str, image: str, policy: str) -> None:
    client.register(
        f"version: v1\ndeployment: pulls\nservices:\n  {name}:\n    rtype: job\n"
        f"    image: {{name: '{image}', pull_policy: {policy}}}\n"
        "    command: {entrypoint: [/bin/true]}\n",
        replace=True,
    )


def test_a_stuck_registry_delays_only_the_jobs_of_its_image(
    tmp_path: Path, registry: Registry, silent_registry: str
) -> None:
    flags = ("--insecure-registry", silent_registry, "--pull-timeout", f"{PULL_TIMEOUT}s")
    with (
        running_agent(tmp_path / "data", RUNTIMES[0], registry, extra_args=flags) as agent,
        agent.client() as client,
    ):
        register(client, "stuck", f"{silent_registry}/stuck:latest", "if_not_present")
        register(client, "present", "busybox:latest", "if_not_present")
        register(client, "fresh", f"{registry.host}/busybox:latest", "always")
        stuck = client.trigger("stuck")
        wait_until(
            lambda: client.get_execution(stuck.id).status == "initializing",
            30,
            "the stuck job to reach its image step",
        )
        # Meanwhile other images' jobs run to the end, a pull from the good registry too
        # (generous bounds: what is shown is that they do not wait for the stuck pull).
        for name in ("present", "fresh", "present"):
            done = client.wait(client.trigger(name).id)
            assert done.status == "completed", done.message
            assert not client.get_execution(stuck.id).terminal
        # A second job of the stuck image waits for the first one's pull.
        second = client.trigger("stuck")
        failed = client.wait(stuck.id)
        assert failed.status == "failed" and failed.failure_reason == "image_pull"
        assert f"timed out after {PULL_TIMEOUT}s" in failed.message
        assert "--pull-timeout" in failed.message
        client.cancel(second.id)
        # The store was never left locked: the good image still pulls.
        assert client.wait(client.trigger("fresh").id).status == "completed"
