"""Fixtures of the end-to-end suite: every test here runs real containers."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from jobagent_client import JobAgentClient

from tests import tools
from tests.e2e.harness import (
    REQUIRED_BINARIES,
    AgentProcess,
    Registry,
    build_example_image,
    free_port,
    sweep,
)

RUNTIMES = ("youki", "runc")
# Every agent the suite starts, so that what they leave (their volatile directories on
# the tmpfs, a process a failed test left running) is swept when the session ends.
STARTED: list[AgentProcess] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the end-to-end tests; without root they are skipped, and without a program
    that `make test` installs they fail the run under `make test` and CI (tests.tools)."""
    ours = [item for item in items if "tests/e2e" in str(item.path)]
    if not ours:
        return
    absent = tools.missing(*REQUIRED_BINARIES)
    if absent and tools.strict() and os.geteuid() == 0:
        raise pytest.UsageError(f"the end-to-end tests need what is missing: {absent}")
    reason = "end-to-end tests run containers and need root" if os.geteuid() != 0 else ""
    reason = reason or (f"missing: {absent}" if absent else "")
    for item in ours:
        item.add_marker(pytest.mark.e2e)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def sweep_started_agents() -> Iterator[None]:
    """Sweeps each agent the session started once the session is over."""
    yield
    for agent in STARTED:
        agent.stop()
        sweep(agent)


@pytest.fixture(scope="session")
def example_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox-static OCI layout, built by the project's script."""
    return build_example_image(tmp_path_factory.mktemp("image") / "busybox")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, example_image: Path) -> Iterator[Registry]:
    """A loopback registry holding busybox:latest."""
    registry = Registry(tmp_path_factory.mktemp("registry"))
    registry.start()
    registry.push(example_image, "busybox:latest")
    yield registry
    registry.stop()


def start_agent(
    data_dir: Path,
    runtime: str,
    registry: Registry,
    cwd: Path | None = None,
    extra_args: tuple[str, ...] = (),
    listen: str = "",
    credentials: grpc.ChannelCredentials | None = None,
    umask: int = -1,
) -> AgentProcess:
    """An agent whose store has busybox:latest, pulled from the loopback registry."""
    agent = AgentProcess(
        data_dir,
        runtime,
        registry.host,
        cwd=cwd or Path.cwd(),
        extra_args=extra_args,
        listen=listen,
        credentials=credentials,
        umask=umask,
    )
    (agent.cwd / data_dir).mkdir(parents=True, exist_ok=True)
    STARTED.append(agent)
    agent.import_image(f"docker://{registry.host}/busybox:latest", "busybox:latest")
    agent.start()
    return agent


def start_agent_with_tokens(
    directory: Path,
    registry: Registry,
    tokens: Mapping[str, tuple[str, str]],
    extra_args: tuple[str, ...] = (),
) -> AgentProcess:
    """An agent (the first runtime) on a loopback port whose tokens file names `tokens`:
    name -> (role, token)."""
    tokens_file = directory / "tokens.yaml"
    tokens_file.write_text(
        "tokens:\n"
        + "".join(
            f"  - {{name: {name}, role: {role}, token: {token}}}\n"
            for name, (role, token) in tokens.items()
        )
    )
    return start_agent(
        directory / "data",
        RUNTIMES[0],
        registry,
        listen=f"127.0.0.1:{free_port()}",
        extra_args=("--tokens-file", str(tokens_file), *extra_args),
    )


@contextmanager
def running_agent(
    data_dir: Path, runtime: str, registry: Registry, **options: Any
) -> Iterator[AgentProcess]:
    """start_agent's agent, stopped and swept when the block ends."""
    agent = start_agent(data_dir, runtime, registry, **options)
    try:
        yield agent
    finally:
        agent.stop()
        sweep(agent)


@pytest.fixture(scope="session", params=RUNTIMES)
def agent(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, registry: Registry
) -> Iterator[AgentProcess]:
    """One agent per runtime, shared by the tests that do not stop it."""
    runtime: str = request.param
    with running_agent(tmp_path_factory.mktemp(f"agent-{runtime}"), runtime, registry) as agent:
        yield agent


@pytest.fixture
def client(agent: AgentProcess) -> Iterator[JobAgentClient]:
    """A client of the shared agent."""
    with agent.client() as client:
        yield client
