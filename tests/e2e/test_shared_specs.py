"""Every job spec of the project's shared set, with the outcome its first line states."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from jobagent_client import ClientError, JobAgentClient
from jobagent_client.models import Execution

from tests.e2e.conftest import RUNTIMES, running_agent
from tests.e2e.harness import REPO, AgentProcess, Registry

SPECS_DIR = Path(os.environ.get("JOBAGENT_SPECS_DIR", REPO.parent / "shared" / "specs"))
SPECS = sorted(SPECS_DIR.glob("*.yaml")) if SPECS_DIR.is_dir() else []


def stdout_of(client: JobAgentClient, execution: Execution, stream: str) -> list[str]:
    return [line.message for line in client.logs(execution.id, stream=stream)]


def backup(client: JobAgentClient, execution: Execution) -> None:
    assert (execution.status, execution.exit_code) == ("completed", 0)
    assert "backup done" in stdout_of(client, execution, "stdout")


def failing(client: JobAgentClient, execution: Execution) -> None:
    assert (execution.status, execution.exit_code, execution.failure_reason) == (
        "failed",
        3,
        "exit_code",
    )
    assert "schema locked" in stdout_of(client, execution, "stderr")


def out_of_memory(client: JobAgentClient, execution: Execution) -> None:
    assert (execution.status, execution.failure_reason) == ("failed", "oom_killed")
    assert execution.exit_code == 137


def waits_for_the_port(client: JobAgentClient, job_name: str) -> None:
    """The job waits in its init step until the test opens 127.0.0.1:15432, then runs."""
    execution = client.trigger(job_name)
    events = client.watch(execution.id)
    seen = []
    for event in events:
        seen.append(event)
        if event.type == "init_step_started":
            break
    with socket.create_server(("127.0.0.1", 15432)):
        seen.extend(events)
    steps = [(event.type, event.step_id) for event in seen if event.step_id]
    assert steps == [("init_step_started", "wait-db"), ("init_step_succeeded", "wait-db")]
    final = seen[-1].execution
    assert (final.status, final.exit_code) == ("completed", 0)
    assert [line.message for line in client.logs(execution.id)] == ["loaded"]


def run_and_check(check: Callable[[JobAgentClient, Execution], None]) -> Runner:
    def runner(client: JobAgentClient, job_name: str) -> None:
        check(client, client.wait(client.trigger(job_name).id))

    return runner


Runner = Callable[[JobAgentClient, str], None]
OUTCOMES: dict[str, Runner] = {
    "backup-job.yaml": run_and_check(backup),
    "failing-job.yaml": run_and_check(failing),
    "resources.yaml": run_and_check(out_of_memory),
    "init-steps.yaml": waits_for_the_port,
}


def remove_job(client: JobAgentClient, name: str) -> None:
    """Unregisters a job, cancelling what its schedule started meanwhile."""
    for _ in range(20):
        for execution in client.list_executions(name):
            if not execution.terminal:
                with contextlib.suppress(ClientError):
                    client.cancel(execution.id)
        try:
            client.unregister(name)
            return
        except ClientError as error:
            assert error.code is grpc.StatusCode.FAILED_PRECONDITION, error
    raise AssertionError(f"{name} could not be unregistered")


def verdict(path: Path) -> tuple[str, str]:
    """("accept", "") or ("reject", field) from the file's first comment line."""
    first = path.read_text().splitlines()[0]
    match = re.match(r"#\s*(accept|reject)(?::\s*(\S+))?", first)
    assert match, f"{path.name}: first line must say accept or reject"
    return match.group(1), match.group(2) or ""


@pytest.fixture(scope="module", params=RUNTIMES)
def specs_agent(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, registry: Registry
) -> Iterator[AgentProcess]:
    """An agent that allows host networking: init-steps.yaml's job waits on the host's
    loopback, which only a job in the host's network can reach."""
    runtime: str = request.param
    data_dir = tmp_path_factory.mktemp(f"specs-{runtime}")
    cwd = tmp_path_factory.mktemp(f"specs-cwd-{runtime}")
    options = {"cwd": cwd, "extra_args": ("--allow-host-network",)}
    with running_agent(data_dir, runtime, registry, **options) as agent:
        yield agent


@pytest.fixture
def specs_client(specs_agent: AgentProcess) -> Iterator[JobAgentClient]:
    """A client of the shared specs' agent."""
    with specs_agent.client() as client:
        yield client


@pytest.mark.parametrize("path", SPECS, ids=[path.name for path in SPECS])
def test_shared_spec(path: Path, specs_client: JobAgentClient) -> None:
    client = specs_client
    kind, field = verdict(path)
    if kind == "reject":
        with pytest.raises(ClientError) as caught:
            client.register(path.read_text(), replace=True)
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.field == field
        return
    jobs = client.register(path.read_text(), replace=True)
    assert jobs
    for job in jobs:
        if job.kind == "cron":
            registered = client.get_job(job.name)
            assert registered.schedule and registered.next_run_time is not None
            # The scheduler would go on running it beside the other tests.
            remove_job(client, job.name)
            continue
        runner = OUTCOMES.get(path.name)
        assert runner is not None, f"{path.name}: add its expected outcome to OUTCOMES"
        runner(client, job.name)


def test_the_shared_specs_are_there() -> None:
    assert SPECS, f"no job specs in {SPECS_DIR} (set JOBAGENT_SPECS_DIR)"


def test_the_agent_leaves_nothing_in_its_working_directory(specs_agent: AgentProcess) -> None:
    """Not even conmon's `oom` file of the OOM-killed job (resources.yaml)."""
    assert list(specs_agent.cwd.iterdir()) == []
