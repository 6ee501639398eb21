"""Resources, user and labels reach the container through the runtime."""

from __future__ import annotations

import json
from pathlib import Path

from jobagent_client import JobAgentClient

from tests.e2e.harness import AgentProcess, leftovers, wait_until

CGROUP = Path("/sys/fs/cgroup")


def register(client: JobAgentClient, name: str, extra: str, script: str) -> None:
    client.register(
        f"version: v1\ndeployment: limits\nservices:\n  {name}:\n    rtype: job\n"
        f"    image: {{name: busybox:latest}}\n{extra}"
        f"    command: {{entrypoint: [/bin/sh, -c, {script!r}]}}\n",
        replace=True,
    )


def cgroup_value(container_id: str, controller: str, v1_file: str, v2_file: str) -> str:
    """A cgroup setting of the container, from whichever hierarchy holds the controller."""
    for path in (
        CGROUP / controller / "jobagent" / container_id / v1_file,
        CGROUP / "jobagent" / container_id / v2_file,
        CGROUP / "unified" / "jobagent" / container_id / v2_file,
    ):
        if path.exists():
            return path.read_text().strip()
    raise AssertionError(f"no {controller} cgroup for {container_id}")


def test_limits_are_set_on_the_cgroup_and_labels_on_the_bundle(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    extra = (
        "    resources: {cpu: 0.5, memory: 64Mi, pids_limit: 32}\n"
        "    labels: {team: ops, tier: batch}\n"
    )
    register(client, "limited", extra, "sleep 30")
    execution = client.trigger("limited")
    wait_until(lambda: client.get_execution(execution.id).status == "running", 30, "running")
    try:
        cid = execution.container_id
        assert cgroup_value(cid, "memory", "memory.limit_in_bytes", "memory.max") == str(64 << 20)
        quota = cgroup_value(cid, "cpu", "cpu.cfs_quota_us", "cpu.max").split()[0]
        assert quota == "50000"
        assert cgroup_value(cid, "pids", "pids.max", "pids.max") == "32"
        bundle = agent.cwd / agent.data_dir / "containers" / cid / "config.json"
        annotations = json.loads(bundle.read_text())["annotations"]
        assert (annotations["team"], annotations["tier"]) == ("ops", "batch")
    finally:
        client.cancel(execution.id)


def test_the_pids_limit_stops_a_fork_storm(client: JobAgentClient) -> None:
    register(client, "forky", "    resources: {pids_limit: 16}\n",
             "for i in $(seq 40); do sleep 2 & done; wait")  # fmt: skip
    execution = client.wait(client.trigger("forky").id)
    stderr = [line.message for line in client.logs(execution.id, stream="stderr")]
    assert any("fork" in line.lower() for line in stderr), stderr


def test_exit_code_137_alone_is_not_called_out_of_memory(client: JobAgentClient) -> None:
    register(
        client, "selfkill", "    resources: {memory: 64Mi}\n", "sleep 30 & kill -9 $!; wait $!"
    )
    execution = client.wait(client.trigger("selfkill").id)
    assert (execution.status, execution.exit_code, execution.failure_reason) == (
        "failed",
        137,
        "exit_code",
    )


def test_the_user_of_the_spec_runs_the_process(client: JobAgentClient) -> None:
    register(client, "as-user", "    user: '1000:1001'\n", "id -u; id -g")
    execution = client.wait(client.trigger("as-user").id)
    assert execution.status == "completed"
    assert [line.message for line in client.logs(execution.id)] == ["1000", "1001"]


def test_the_timeout_stops_the_job_with_deadline_exceeded(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    register(client, "overdue", "    timeout: 1s\n    stop_grace_period: 10s\n",
             "trap 'exit 143' TERM; sleep 300 & wait")  # fmt: skip
    execution = client.wait(client.trigger("overdue").id)
    assert (execution.status, execution.failure_reason, execution.exit_code) == (
        "failed",
        "deadline_exceeded",
        143,
    )
    assert leftovers(agent, execution.container_id) == []


def test_cancel_sends_the_jobs_stop_signal(client: JobAgentClient) -> None:
    register(client, "usr1", "    stop_signal: SIGUSR1\n",
             "trap 'exit 42' USR1; sleep 300 & wait")  # fmt: skip
    execution = client.trigger("usr1")
    wait_until(lambda: client.get_execution(execution.id).status == "running", 30, "running")
    assert client.cancel(execution.id).exit_code == 42
