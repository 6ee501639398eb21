"""Resources, user and labels reach the container through the runtime."""

from __future__ import annotations

import itertools
import json
import os
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from jobagent_client import ClientError, JobAgentClient, JobEvent
from jobagent_client.models import ExecutionEvent, LogLine

from agent.executor.logs import LOG_FILE_FACTOR
from agent.priority import HIGHEST
from agent.privileges import ALL_CAPABILITIES
from agent.runtime.bundle import DEFAULT_CAPABILITIES
from agent.settings import DEFAULTS
from tests.e2e.harness import AgentProcess, settled_leftovers, wait_until

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


def wait_for_output(client: JobAgentClient, execution_id: str, lines: list[str]) -> None:
    """Waits until the execution has logged `lines`: a script's trap is set once it prints.
    (The container's init ignores a signal it has no handler for, so a cancel that comes
    before the trap would wait out the grace period.)"""
    wait_until(
        lambda: [line.message for line in client.logs(execution_id)] == lines,
        30,
        f"the output {lines}",
    )


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
        bundle = agent.paths.bundles / cid / "config.json"
        annotations = json.loads(bundle.read_text())["annotations"]
        assert (annotations["team"], annotations["tier"]) == ("ops", "batch")
    finally:
        client.cancel(execution.id)


def test_every_job_gets_the_default_pids_limit_and_tmp_size(client: JobAgentClient) -> None:
    register(
        client,
        "defaults",
        "",
        "trap 'exit 0' TERM; df -k /tmp | awk 'NR == 2 {print $2}'; sleep 30 & wait",
    )
    execution = client.trigger("defaults")
    wait_for_output(client, execution.id, [str(64 * 1024)])
    try:
        pids = cgroup_value(execution.container_id, "pids", "pids.max", "pids.max")
        assert pids == str(DEFAULTS.limits.pids_limit) == "4096"
    finally:
        client.cancel(execution.id)
    assert [line.message for line in client.logs(execution.id)] == [str(64 * 1024)]


def test_the_pids_limit_stops_a_fork_storm(client: JobAgentClient) -> None:
    register(
        client,
        "forky",
        "    resources: {pids_limit: 16}\n",
        "for i in $(seq 40); do sleep 2 & done; wait",
    )
    execution = client.wait(client.trigger("forky").id)
    stderr = [line.message for line in client.logs(execution.id, stream="stderr")]
    assert any("fork" in line.lower() for line in stderr), stderr


def nice_of(stat: Path) -> int:
    """The nice value in a /proc stat file (field 19; the name in field 2 may hold spaces)."""
    return int(stat.read_text().rpartition(")")[2].split()[16])


def test_the_agents_threads_run_ahead_of_the_containers_it_starts(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    if "CAP_SYS_NICE" in agent.log_file.read_text():
        pytest.skip("this machine refuses the agent a higher priority (no CAP_SYS_NICE)")
    register(client, "niceness", "", "cut -d' ' -f19 /proc/self/stat")
    execution = client.wait(client.trigger("niceness").id)
    # The agent was started from this thread: what it starts keeps this thread's value.
    started_at = os.getpriority(os.PRIO_PROCESS, 0)
    assert [line.message for line in client.logs(execution.id)] == [str(started_at)]
    assert agent.process is not None
    threads = {
        int(task.name): nice_of(task / "stat")
        for task in Path(f"/proc/{agent.process.pid}/task").iterdir()
    }
    # The event loop's thread (the process's first) and gRPC's run the default boost ahead.
    boosted = max(HIGHEST, started_at - DEFAULTS.priority_boost)
    assert threads[agent.process.pid] == boosted
    assert sorted(set(threads.values())) == sorted({boosted, started_at})


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
    register(
        client,
        "overdue",
        "    timeout: 1s\n    stop_grace_period: 10s\n",
        "trap 'exit 143' TERM; sleep 300 & wait",
    )
    execution = client.wait(client.trigger("overdue").id)
    assert (execution.status, execution.failure_reason, execution.exit_code) == (
        "failed",
        "deadline_exceeded",
        143,
    )
    assert settled_leftovers(agent, execution.container_id) == []


def test_cancel_sends_the_jobs_stop_signal(client: JobAgentClient) -> None:
    script = "trap 'exit 42' USR1; echo trapped; sleep 300 & wait"
    register(client, "usr1", "    stop_signal: SIGUSR1\n", script)
    execution = client.trigger("usr1")
    wait_for_output(client, execution.id, ["trapped"])
    assert client.cancel(execution.id).exit_code == 42


def test_init_run_runs_in_a_container_of_the_jobs_image(client: JobAgentClient) -> None:
    steps = (
        "    init:\n      steps:\n"
        # /usr/bin/python3 exists on the host, never in the busybox image.
        "        - {id: in-image, uses: init.run, with: {command: 'test ! -e /usr/bin/python3'}}\n"
        "        - {id: optional, uses: init.run, with: {command: 'exit 3'}, on_failure: warn}\n"
    )
    register(client, "prepared", steps, "echo main")
    execution = client.trigger("prepared")
    events = list(client.watch(execution.id))
    outcomes = [(event.type, event.step_id) for event in events if event.step_id]
    assert outcomes == [
        ("init_step_started", "in-image"),
        ("init_step_succeeded", "in-image"),
        ("init_step_started", "optional"),
        ("init_step_failed", "optional"),
    ]
    (failed,) = [event for event in events if event.type == "init_step_failed"]
    assert "exited with code 3" in failed.message and "warning" in failed.message
    assert events[-1].execution.status == "completed"
    assert [line.message for line in client.logs(execution.id)] == ["main"]


def test_a_failing_init_step_fails_the_execution_with_init(client: JobAgentClient) -> None:
    steps = (
        "    init:\n      steps:\n        - {id: gate, uses: init.run, with: {command: 'exit 4'}}\n"
    )
    register(client, "gated", steps, "echo never")
    execution = client.wait(client.trigger("gated").id)
    assert (execution.status, execution.failure_reason) == ("failed", "init")
    assert "init step gate failed: the command exited with code 4" in execution.message
    assert list(client.logs(execution.id)) == []


def test_max_concurrent_runs_one_at_a_time_in_trigger_order(client: JobAgentClient) -> None:
    register(client, "serial", "    max_concurrent: 1\n", "sleep 0.4")
    executions = [client.trigger("serial") for _ in range(3)]
    assert [execution.queue_position for execution in executions] == [0, 1, 2]
    waiting = client.get_execution(executions[2].id)
    assert (waiting.status, waiting.queue_position) in {("pending", 2), ("pending", 1)}
    finals = [client.wait(execution.id) for execution in executions]
    assert [final.status for final in finals] == ["completed"] * 3
    for before, after in itertools.pairwise(finals):
        assert before.finished_at and after.started_at and before.finished_at <= after.started_at
    events = list(client.watch(executions[1].id))
    assert events[-1].execution.status == "completed"


def test_failed_attempts_are_retried_in_new_containers_with_their_own_logs(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    retry = "    backoff_limit: 2\n    retry_policy: {initial_delay: 100ms}\n"
    register(client, "flaky", retry, "echo attempt on $HOSTNAME; exit 7")
    execution = client.trigger("flaky")
    events = list(client.watch(execution.id))
    types = [event.type for event in events]
    assert types.count("attempt_failed") == 2 and types.count("attempt_started") == 2
    final = client.get_execution(execution.id)
    assert (final.status, final.attempt, final.exit_code) == ("failed", 3, 7)
    assert [attempt.exit_code for attempt in final.attempts] == [7, 7, 7]
    assert len({attempt.container_id for attempt in final.attempts}) == 3
    for number in (1, 2, 3):
        lines = [line.message for line in client.logs(execution.id, attempt=number)]
        assert lines == ["attempt on flaky"]
        assert settled_leftovers(agent, final.attempts[number - 1].container_id) == []


def test_a_fail_exit_code_is_never_retried(client: JobAgentClient) -> None:
    retry = "    backoff_limit: 5\n    retry_policy: {fail_exit_codes: [3]}\n"
    register(client, "fatal", retry, "exit 3")
    final = client.wait(client.trigger("fatal").id)
    assert (final.status, final.attempt, final.exit_code) == ("failed", 1, 3)


def output_of(lines: list[LogLine]) -> bytes:
    """The bytes the container wrote, as the lines read give them back."""
    return b"".join(line.message.encode() + (b"" if line.partial else b"\n") for line in lines)


def test_the_log_cap_keeps_the_newest_output(client: JobAgentClient, agent: AgentProcess) -> None:
    register(
        client,
        "chatty",
        "    max_log_size: 2Ki\n",
        "i=0; while [ $i -lt 300 ]; do i=$((i+1)); echo line $i; done",
    )
    execution = client.wait(client.trigger("chatty").id)
    assert execution.status == "completed"
    lines = list(client.logs(execution.id))
    everything = "".join(f"line {i}\n" for i in range(1, 301)).encode()
    assert output_of(lines) == everything[-2048:]
    assert lines[0].truncated and not any(line.truncated for line in lines[1:])
    log_file = agent.cwd / agent.data_dir / "logs" / execution.id / "1.log"
    assert log_file.stat().st_size <= LOG_FILE_FACTOR * 2048


def test_the_default_log_cap_is_the_newest_mebibyte_of_output(client: JobAgentClient) -> None:
    """The seed's default: 1 MiB of the container's output bytes, the newest of them."""
    register(client, "verbose", "", "seq 1 200000 | sed s/^/line-/")
    execution = client.wait(client.trigger("verbose").id)
    assert execution.status == "completed"
    lines = list(client.logs(execution.id))
    everything = "".join(f"line-{i}\n" for i in range(1, 200001)).encode()
    assert output_of(lines) == everything[-(1 << 20) :]
    assert lines[-1].message == "line-200000"
    assert lines[0].truncated and not any(line.truncated for line in lines[1:])


def test_the_cancel_request_can_name_the_stop_signal(client: JobAgentClient) -> None:
    register(client, "interruptible", "", "trap 'exit 21' INT; echo trapped; sleep 300 & wait")
    execution = client.trigger("interruptible")
    wait_for_output(client, execution.id, ["trapped"])
    assert client.cancel(execution.id, signal="SIGINT").exit_code == 21


def test_a_queued_execution_is_cancelled_without_a_container(client: JobAgentClient) -> None:
    register(client, "one-slot", "    max_concurrent: 1\n", "sleep 30")
    first, second = client.trigger("one-slot"), client.trigger("one-slot")
    assert client.get_execution(second.id).queue_position == 1
    cancelled = client.cancel(second.id)
    assert (cancelled.status, cancelled.started_at) == ("cancelled", None)
    assert client.cancel(first.id, grace=timedelta(seconds=1)).status == "cancelled"


def test_a_cron_job_every_second_runs_by_itself_with_overlap_and_history_rules(
    client: JobAgentClient,
) -> None:
    client.register(
        "version: v1\ndeployment: cron\nservices:\n  every-second:\n    rtype: cron\n"
        "    schedule: '* * * * * *'\n    concurrency_policy: forbid\n"
        "    successful_jobs_history_limit: 2\n"
        "    image: {name: busybox:latest}\n"
        "    command: {entrypoint: [/bin/sh, -c, 'sleep 1.2; echo tick']}\n",
        replace=True,
    )
    job = client.get_job("every-second")
    assert job.next_run_time is not None
    wait_until(
        lambda: (
            client.get_job("every-second").skipped >= 1
            and len([e for e in client.list_executions("every-second") if e.status == "completed"])
            >= 2
        ),
        30,
        "three runs",
    )
    suspended = client.suspend("every-second")
    assert suspended.suspended and suspended.next_run_time is None
    job_events = client.watch_events(
        0, job_name="every-second", types=("schedule_skipped", "job_suspended")
    )
    seen = []
    for event in job_events:
        assert isinstance(event, JobEvent)
        seen.append(event)
        if event.type == "job_suspended":
            break
    assert seen[0].type == "schedule_skipped" and "still active" in seen[0].message
    assert seen[0].schedule_time is not None
    executions = client.list_executions("every-second")
    assert {execution.trigger for execution in executions} == {"scheduler"}
    for execution in executions:
        if not execution.terminal:
            client.wait(execution.id)
    wait_until(
        lambda: (
            len([e for e in client.list_executions("every-second") if e.status == "completed"]) == 2
        ),
        10,
        "history limit",
    )
    assert client.get_job("every-second").next_run_time is None
    client.unregister("every-second")
    with pytest.raises(ClientError) as caught:
        client.resume("every-second")
    assert caught.value.code is grpc.StatusCode.NOT_FOUND


def status_fields(client: JobAgentClient, execution_id: str) -> dict[str, str]:
    """The Seccomp, NoNewPrivs and CapBnd lines the job printed from /proc/self/status."""
    lines = [line.message for line in client.logs(execution_id, stream="stdout")]
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


HARDENING_PROBE = (
    "grep -E '^(Seccomp|NoNewPrivs|CapBnd):' /proc/self/status; "
    "unshare -n true && echo unshare-allowed; "
    "mount -t tmpfs none /mnt && echo mount-allowed; true"
)


def test_jobs_run_hardened_by_default(client: JobAgentClient) -> None:
    register(client, "hardened", "", HARDENING_PROBE)
    execution = client.wait(client.trigger("hardened").id)
    assert execution.status == "completed", execution.message
    fields = status_fields(client, execution.id)
    default = sum(1 << ALL_CAPABILITIES.index(name) for name in DEFAULT_CAPABILITIES)
    assert (fields["Seccomp"], fields["NoNewPrivs"]) == ("2", "1")  # a filter, no setuid gains
    assert int(fields["CapBnd"], 16) == default
    output = [line.message for line in client.logs(execution.id)]
    assert "unshare-allowed" not in output and "mount-allowed" not in output
    with pytest.raises(ClientError) as caught:
        register(client, "wants-privileges", "    privileged: true\n", "true")
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "services.wants-privileges.privileged"


def test_a_replacing_cron_run_starts_only_once_the_one_it_replaces_has_ended(
    client: JobAgentClient,
) -> None:
    client.register(
        "version: v1\ndeployment: cron\nservices:\n  replacer:\n    rtype: cron\n"
        "    schedule: '*/2 * * * * *'\n    concurrency_policy: replace\n"
        "    failed_jobs_history_limit: 10\n    stop_grace_period: 1s\n"
        "    image: {name: busybox:latest}\n"
        "    command: {entrypoint: [/bin/sleep, '60']}\n",
        replace=True,
    )
    try:
        wait_until(
            lambda: (
                len([e for e in client.list_executions("replacer") if e.status == "cancelled"]) >= 2
            ),
            60,
            "two runs replaced",
        )
    finally:
        client.suspend("replacer")
    for execution in client.list_executions("replacer"):
        if not execution.terminal:
            client.cancel(execution.id, grace=timedelta(seconds=1))
    # Each run's process starts only once the one before it ended: never side by side.
    active: set[str] = set()
    for event in client.watch_events(0, job_name="replacer"):
        if isinstance(event, JobEvent):
            if event.type == "job_suspended":
                break
            continue
        if not isinstance(event, ExecutionEvent) or event.type != "transition":
            continue
        execution = event.execution
        if execution.status == "initializing":
            assert not active, f"{execution.id} started beside {active}"
            active.add(execution.id)
        elif execution.terminal:
            active.discard(execution.id)
    replaced = [e for e in client.list_executions("replacer") if e.status == "cancelled"]
    assert len(replaced) >= 2
