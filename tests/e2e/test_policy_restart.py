"""The host policy holds at every run: a job registered under --allow-privileged is
refused once the agent restarts without it, whether a caller triggers it or its schedule
does, and never runs with the privilege it no longer has."""

from __future__ import annotations

import grpc
import pytest
from jobagent_client import ClientError, Execution, JobAgentClient

from tests.e2e.conftest import RUNTIMES, start_agent
from tests.e2e.harness import Registry, sweep, wait_until

JOBS = (
    "version: v1\ndeployment: policy\nservices:\n"
    "  powerful:\n    rtype: job\n    image: {name: busybox:latest}\n"
    "    privileged: true\n    command: {entrypoint: [/bin/true]}\n"
    "  powerful-cron:\n    rtype: cron\n    schedule: '* * * * * *'\n    suspend: true\n"
    "    image: {name: busybox:latest}\n    privileged: true\n"
    "    command: {entrypoint: [/bin/true]}\n"
)


def failed_runs(client: JobAgentClient, job: str) -> list[Execution]:
    return [run for run in client.list_executions(job) if run.status == "failed"]


def test_a_restart_without_the_flag_refuses_the_privileged_job(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry
) -> None:
    data_dir = tmp_path_factory.mktemp("policy")
    agent = start_agent(data_dir, RUNTIMES[0], registry, extra_args=("--allow-privileged",))
    try:
        with agent.client() as client:
            client.register(JOBS, replace=True)
            ran = client.wait(client.trigger("powerful").id)
            assert ran.status == "completed", ran.message
        agent.stop()
        agent = start_agent(data_dir, RUNTIMES[0], registry)
        with agent.client() as client:
            with pytest.raises(ClientError) as caught:
                client.trigger("powerful")
            assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
            assert "privileged" in caught.value.message
            assert [run.id for run in client.list_executions("powerful")] == [ran.id]
            client.resume("powerful-cron")
            try:
                wait_until(lambda: failed_runs(client, "powerful-cron"), 20, "a refused cron run")
            finally:
                client.suspend("powerful-cron")
            runs = client.list_executions("powerful-cron")
            assert runs and all(run.status == "failed" for run in runs), runs
            refused = runs[0]
            assert "spec.privileged" in refused.message
            assert refused.failure_reason == "create"
            assert refused.started_at is None
            assert client.get_execution(refused.id).attempts == ()
    finally:
        agent.stop()
        sweep(agent)
