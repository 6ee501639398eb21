"""One job end to end: real agent process, real youki (and runc), real registry."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from jobagent_client import ClientError, JobAgentClient
from jobagent_client.models import Execution

from tests.e2e.conftest import start_agent
from tests.e2e.harness import AgentProcess, Registry, settled_leftovers, sweep, wait_until

ORDER = ["pending", "initializing", "running", "completed"]


def job(name: str, script: str, image: str = "busybox:latest", policy: str = "") -> str:
    """A deployment document with one job running `sh -c script`."""
    pull = f", pull_policy: {policy}" if policy else ""
    return (
        f"version: v1\ndeployment: e2e\nservices:\n  {name}:\n    rtype: job\n"
        f"    image: {{name: '{image}'{pull}}}\n"
        f"    command:\n      entrypoint: ['/bin/sh', '-c', {script!r}]\n"
    )


def run(client: JobAgentClient, name: str, script: str) -> Execution:
    """Registers (or replaces) the job, triggers it and waits for the end."""
    client.register(job(name, script), replace=True)
    return client.wait(client.trigger(name).id)


def test_exit_zero_completes(client: JobAgentClient) -> None:
    execution = run(client, "ok", "echo fine")
    assert (execution.status, execution.exit_code, execution.failure_reason) == (
        "completed",
        0,
        "",
    )
    assert execution.trigger == "endpoint"
    assert execution.remote_address.startswith("ipv4:127.0.0.1:")
    assert execution.created_at and execution.started_at and execution.finished_at
    assert execution.created_at <= execution.started_at <= execution.finished_at
    assert execution.duration == execution.finished_at - execution.started_at
    assert "@sha256:" in execution.image


def test_exit_three_fails_with_its_code(client: JobAgentClient) -> None:
    execution = run(client, "three", "exit 3")
    assert (execution.status, execution.exit_code, execution.failure_reason) == (
        "failed",
        3,
        "exit_code",
    )


def test_stdout_and_stderr_keep_their_order_and_stream(client: JobAgentClient) -> None:
    script = "for i in 1 2 3; do echo out$i; sleep 0.1; echo err$i >&2; sleep 0.1; done"
    execution = run(client, "interleave", script)
    lines = [(line.stream, line.message) for line in client.logs(execution.id)]
    assert lines == [
        (stream, f"{prefix}{i}")
        for i in (1, 2, 3)
        for stream, prefix in (("stdout", "out"), ("stderr", "err"))
    ]
    assert [line.message for line in client.logs(execution.id, stream="stderr")] == [
        "err1",
        "err2",
        "err3",
    ]
    assert [line.message for line in client.logs(execution.id, tail_lines=2)] == ["out3", "err3"]


def test_the_image_config_and_spec_env_reach_the_process(client: JobAgentClient) -> None:
    document = (
        "version: v1\ndeployment: e2e\nservices:\n  env:\n    rtype: job\n"
        "    image: {name: busybox:latest}\n"
        "    env: {GREETING: hello}\n"
        "    command:\n      entrypoint: [/bin/sh, -c]\n"
        "      args: ['echo $GREETING $PATH; pwd; id -u']\n      workdir: /tmp\n"
    )
    client.register(document, replace=True)
    execution = client.wait(client.trigger("env").id)
    assert execution.status == "completed"
    assert [line.message for line in client.logs(execution.id)] == [
        "hello /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "/tmp",
        "0",
    ]


def test_cancel_stops_within_the_grace_period_and_leaves_nothing(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    script = "trap 'exit 143' TERM; echo trapped; sleep 300 & wait"
    client.register(job("sleeper", script), replace=True)
    execution = client.trigger("sleeper")

    def trapped() -> bool:
        # The shell is the container's init: a SIGTERM before its trap is set is ignored.
        return [line.message for line in client.logs(execution.id)] == ["trapped"]

    wait_until(trapped, 30, "the trap")
    cancelled = client.cancel(execution.id, grace=timedelta(seconds=20))
    assert cancelled.status == "cancelled"
    # The shell handled SIGTERM: it ended within the grace period, before any SIGKILL.
    assert cancelled.exit_code == 143
    assert settled_leftovers(agent, execution.container_id) == []
    with pytest.raises(ClientError) as caught:
        client.cancel(execution.id)
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION


def test_cancel_kills_a_process_that_ignores_the_stop_signal(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    client.register(job("stubborn", "trap '' TERM; sleep 300"), replace=True)
    execution = client.trigger("stubborn")
    wait_until(lambda: client.get_execution(execution.id).status == "running", 30, "running")
    cancelled = client.cancel(execution.id, grace=timedelta(seconds=0.5))
    assert (cancelled.status, cancelled.exit_code) == ("cancelled", 137)
    assert settled_leftovers(agent, execution.container_id) == []


def test_watch_sees_every_transition_once_and_in_order(client: JobAgentClient) -> None:
    client.register(job("watched", "sleep 0.3"), replace=True)
    execution = client.trigger("watched")
    events = list(client.watch(execution.id))
    statuses = [event.execution.status for event in events]
    assert statuses == ORDER[ORDER.index(statuses[0]) :]
    assert "running" in statuses
    sequences = [event.sequence for event in events]
    assert sequences == sorted(set(sequences))
    # A watch of a finished execution sends its final state and ends.
    (final,) = list(client.watch(execution.id))
    assert final.sequence == sequences[-1] and final.execution.status == "completed"


def test_follow_streams_lines_while_running_and_ends_with_the_job(
    client: JobAgentClient,
) -> None:
    client.register(
        job("ticker", "for i in 1 2 3 4; do echo tick$i; sleep 0.3; done"), replace=True
    )
    execution = client.trigger("ticker")
    seen: list[tuple[str, str]] = []
    for line in client.logs(execution.id, follow=True):
        seen.append((line.message, client.get_execution(execution.id).status))
    assert [message for message, _ in seen] == ["tick1", "tick2", "tick3", "tick4"]
    assert seen[0][1] == "running"
    assert client.get_execution(execution.id).status == "completed"


def test_unknown_names_and_ids_are_not_found(client: JobAgentClient) -> None:
    calls: list[Callable[[], object]] = [
        lambda: client.trigger("no-such-job"),
        lambda: client.get_job("no-such-job"),
        lambda: client.get_execution("0" * 32),
        lambda: client.cancel("0" * 32),
        lambda: list(client.watch("0" * 32)),
        lambda: list(client.logs("0" * 32)),
    ]
    for call in calls:
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.code is grpc.StatusCode.NOT_FOUND


def test_concurrent_triggers_get_distinct_containers(client: JobAgentClient) -> None:
    client.register(job("many", "echo $HOSTNAME"), replace=True)
    executions: list[Execution] = []
    lock = threading.Lock()

    def trigger() -> None:
        execution = client.trigger("many")
        with lock:
            executions.append(execution)

    threads = [threading.Thread(target=trigger) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    finals = [client.wait(execution.id) for execution in executions]
    assert [final.status for final in finals] == ["completed"] * 6
    assert len({final.container_id for final in finals}) == 6


def test_a_missing_image_fails_with_image_pull(client: JobAgentClient, registry: Registry) -> None:
    document = job("ghost", "true", image=f"{registry.host}/no-such-image:1")
    client.register(document, replace=True)
    execution = client.wait(client.trigger("ghost").id)
    assert (execution.status, execution.failure_reason) == ("failed", "image_pull")
    assert "no-such-image" in execution.message


def test_an_image_is_pulled_from_the_loopback_registry(
    client: JobAgentClient, registry: Registry
) -> None:
    document = job(
        "pulled", "echo pulled", image=f"{registry.host}/busybox:latest", policy="always"
    )
    client.register(document, replace=True)
    execution = client.wait(client.trigger("pulled").id)
    assert execution.status == "completed"
    assert execution.image.startswith(f"{registry.host}/busybox:latest@sha256:")
    assert [line.message for line in client.logs(execution.id)] == ["pulled"]


def test_a_missing_executable_fails_at_create_with_the_runtime_message(
    client: JobAgentClient,
) -> None:
    document = (
        "version: v1\ndeployment: e2e\nservices:\n  nobin:\n    rtype: job\n"
        "    image: {name: busybox:latest}\n    command: {entrypoint: [/no/such/binary]}\n"
    )
    client.register(document, replace=True)
    execution = client.wait(client.trigger("nobin").id)
    assert execution.status == "failed"
    assert execution.failure_reason in ("create", "start")
    assert "/no/such/binary" in execution.message or "no such file" in execution.message.lower()


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_records_survive_a_restart_and_running_jobs_are_readopted(
    tmp_path: Path, registry: Registry, agent: AgentProcess, stop_signal: signal.Signals
) -> None:
    """A crash (SIGKILL) or a graceful stop (SIGTERM) leaves the job running under conmon,
    and its bundle; a graceful stop with nothing running leaves nothing under /run."""
    own = start_agent(tmp_path / "agent", agent.runtime, registry)
    try:
        with own.client() as client:
            finished = client.get_execution(run(client, "before", "echo before").id)
            client.register(job("across", "sleep 1; echo survived"), replace=True)
            running = client.trigger("across")
            wait_until(lambda: client.get_execution(running.id).status == "running", 30, "running")
            listed = client.list_executions()
        own.stop(stop_signal)
        assert (own.paths.bundles / running.container_id / "config.json").is_file()
        own.start()
        with own.client() as client:
            assert client.get_execution(finished.id) == finished
            assert [e.id for e in client.list_executions()] == [e.id for e in listed]
            final = client.wait(running.id)
            assert (final.status, final.exit_code) == ("completed", 0)
            assert [line.message for line in client.logs(running.id)] == ["survived"]
            assert settled_leftovers(own, running.container_id) == []
        own.stop()
        assert not own.paths.volatile.exists()
    finally:
        own.stop()
        sweep(own)


def test_a_relative_data_dir_works_as_make_run_uses_it(
    tmp_path: Path, registry: Registry, agent: AgentProcess
) -> None:
    own = start_agent(Path(".data"), agent.runtime, registry, cwd=tmp_path)
    try:
        with own.client() as client:
            execution = run(client, "relative", "echo relative")
            assert execution.status == "completed", execution.message
            assert [line.message for line in client.logs(execution.id)] == ["relative"]
    finally:
        own.stop()
        sweep(own)


def test_a_local_oci_layout_runs_by_reference(client: JobAgentClient, example_image: Path) -> None:
    document = job("from-layout", "echo from layout", image=f"oci:{example_image}:latest")
    client.register(document, replace=True)
    execution = client.wait(client.trigger("from-layout").id)
    assert execution.status == "completed", execution.message
    assert execution.image.startswith(f"oci:{example_image}:latest@sha256:")
    assert [line.message for line in client.logs(execution.id)] == ["from layout"]


def test_retention_removes_old_records_and_logs_but_never_active_ones(
    tmp_path: Path, registry: Registry, agent: AgentProcess
) -> None:
    args = ("--retention-per-job", "2", "--retention-interval", "200ms")
    own = start_agent(tmp_path / "agent", agent.runtime, registry, extra_args=args)
    try:
        with own.client() as client:
            client.register(job("kept", "echo $HOSTNAME"), replace=True)
            client.register(job("long", "sleep 30"), replace=True)
            active = client.trigger("long")
            wait_until(lambda: client.get_execution(active.id).status == "running", 30, "start")

            def finish_and_read() -> Execution:
                # Read as it finishes: the agent has answered for each of them before
                # retention removes it, and must not answer from memory afterwards.
                done = client.wait(client.trigger("kept").id)
                assert client.get_execution(done.id).status == "completed"
                return done

            finished = [finish_and_read() for _ in range(4)]
            logs = own.data_dir / "logs"
            wait_until(lambda: not (logs / finished[1].id).exists(), 10, "retention")
            remaining = {execution.id for execution in client.list_executions(job_name="kept")}
            assert remaining == {finished[2].id, finished[3].id}
            assert not (logs / finished[0].id).exists()
            with pytest.raises(ClientError) as caught:
                client.get_execution(finished[0].id)
            assert caught.value.code is grpc.StatusCode.NOT_FOUND
            assert client.get_execution(active.id).status == "running"
            client.cancel(active.id, grace=timedelta(seconds=1))
            assert client.get_execution(active.id).status == "cancelled"
    finally:
        own.stop()
        sweep(own)
