"""Crashes and graceful stops: every result survives, nothing runs twice, nobody hangs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobagent_client import ClientError, JobAgentClient

from tests.e2e.conftest import start_agent
from tests.e2e.harness import AgentProcess, Registry, settled_leftovers, sweep, wait_until

RUNNING = 12
QUEUED = 3
FLEET = """\
version: v1
deployment: fleet
services:
  fleet:
    rtype: job
    image: {name: busybox:latest}
    command: {entrypoint: [/bin/sh, -c, 'sleep $DELAY; echo "out $CODE"; exit $CODE']}
    dispatch: {required_env: [DELAY, CODE]}
"""


def conmon_pids(container_id: str) -> list[int]:
    """The conmon processes holding a container."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if entry.name.isdigit() and b"conmon" in cmdline[0] and container_id.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def destroy(agent: AgentProcess, container_id: str) -> None:
    """Takes a container away for good, monitor and all, as a reboot or an operator would."""
    for pid in conmon_pids(container_id):
        os.kill(pid, signal.SIGKILL)
    runtime = shutil.which(agent.runtime)
    assert runtime is not None
    state = agent.paths.runtime_state
    subprocess.run(
        [runtime, "--root", str(state), "delete", "--force", container_id],
        check=False,
        capture_output=True,
    )


def test_a_sigkill_with_a_dozen_jobs_running_loses_no_result_and_runs_nothing_twice(
    tmp_path: Path, registry: Registry, agent: AgentProcess
) -> None:
    own = start_agent(
        tmp_path / "agent", agent.runtime, registry, extra_args=("--max-concurrent", str(RUNNING))
    )
    try:
        with own.client() as client:
            client.register(FLEET, replace=True)
            # Half end while the agent is down, half after it is back; three wait in line.
            fleet = [
                client.trigger(
                    "fleet", env={"DELAY": "1" if index % 2 else "5", "CODE": str(index)}
                )
                for index in range(RUNNING + QUEUED)
            ]
            wait_until(
                lambda: all(
                    client.get_execution(e.id).status == "running" for e in fleet[:RUNNING]
                ),
                60,
                "a dozen running",
            )
            assert all(client.get_execution(e.id).status == "pending" for e in fleet[RUNNING:])
            lost = fleet[2]
        own.stop(signal.SIGKILL)
        destroy(own, lost.container_id)
        time.sleep(2)  # the short ones end while nobody watches
        own.start()
        with own.client() as client:
            for execution in fleet:
                client.wait(execution.id)
            check_fleet(client, own, [e.id for e in fleet], lost.id)
    finally:
        own.stop()
        sweep(own)


def check_fleet(client: JobAgentClient, agent: AgentProcess, fleet: list[str], lost: str) -> None:
    """True exit codes, one attempt and one output line each, and no execution added."""
    assert len(client.list_executions("fleet")) == len(fleet)
    for index, execution_id in enumerate(fleet):
        final = client.get_execution(execution_id)
        if execution_id == lost:
            assert (final.status, final.failure_reason) == ("failed", "agent_lost")
            continue
        expected = "completed" if index == 0 else "failed"
        assert (final.status, final.exit_code) == (expected, index), final.message
        assert len(final.attempts) == 1 and final.finished_at is not None
        assert [line.message for line in client.logs(execution_id)] == [f"out {index}"]
        assert settled_leftovers(agent, final.container_id) == []


def test_a_graceful_stop_turns_triggers_away_ends_streams_and_leaves_jobs_running(
    tmp_path: Path, registry: Registry, agent: AgentProcess
) -> None:
    own = start_agent(tmp_path / "agent", agent.runtime, registry, extra_args=("--drain", "3s"))
    try:
        with own.client() as client:
            client.register(LONG, replace=True)
            running = client.trigger("long")
            wait_until(lambda: client.get_execution(running.id).status == "running", 30, "running")
            endings: dict[str, grpc.StatusCode | None] = {}
            streams = {
                "events": lambda: list(client.watch_events(0)),
                "logs": lambda: list(client.logs(running.id, follow=True)),
                "watch": lambda: list(client.watch(running.id)),
            }
            threads = [
                threading.Thread(target=record_ending, args=(name, call, endings))
                for name, call in streams.items()
            ]
            for thread in threads:
                thread.start()
            time.sleep(0.5)  # the streams are open
            assert own.process is not None
            own.process.send_signal(signal.SIGTERM)
            wait_until(
                lambda: health(own) == health_pb2.HealthCheckResponse.NOT_SERVING, 5, "NOT_SERVING"
            )
            with pytest.raises(ClientError) as caught:
                client.trigger("long")
            assert caught.value.code is grpc.StatusCode.UNAVAILABLE
            assert client.get_execution(running.id).status == "running"  # reads still work
            for thread in threads:
                thread.join(10)
            assert endings == dict.fromkeys(streams, grpc.StatusCode.UNAVAILABLE)
            assert own.process.wait(30) == 0
        assert conmon_pids(running.container_id), "the job's monitor went with the agent"
        own.start()
        with own.client() as client:
            assert client.wait(running.id).status == "completed"
            assert [line.message for line in client.logs(running.id)] == ["kept"]
            assert len(client.list_executions("long")) == 1
    finally:
        own.stop()
        sweep(own)


LONG = (
    "version: v1\ndeployment: long\nservices:\n  long:\n    rtype: job\n"
    "    image: {name: busybox:latest}\n"
    "    command: {entrypoint: [/bin/sh, -c, 'sleep 8; echo kept']}\n"
)


def record_ending(
    name: str, call: Callable[[], object], endings: dict[str, grpc.StatusCode | None]
) -> None:
    """Runs a stream to its end and records the status it ended with (None: OK)."""
    try:
        call()
        endings[name] = None
    except ClientError as error:
        endings[name] = error.code


def health(agent: AgentProcess) -> int:
    """The agent's health status now."""
    with grpc.insecure_channel(agent.target) as channel:
        return int(
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(), timeout=2)
            .status
        )


SLEEPER = (
    "version: v1\ndeployment: sleeper\nservices:\n  sleeper:\n    rtype: job\n"
    "    image: {name: busybox:latest}\n"
    "    command: {entrypoint: [/bin/sh, -c, 'echo up; sleep 300']}\n"
)


@pytest.mark.parametrize("agent_down", [False, True], ids=["agent-up", "agent-down"])
def test_a_job_whose_monitor_is_killed_ends_lost_and_leaves_nothing(
    tmp_path: Path, registry: Registry, agent: AgentProcess, agent_down: bool
) -> None:
    """conmon holds a job's output and writes its exit code: once it is SIGKILLed (the OOM
    killer, an operator), nobody will record that exit. The run ends Failed as lost, its
    process is killed and its container removed; it never waits for ever."""
    own = start_agent(tmp_path / "agent", agent.runtime, registry)
    try:
        with own.client() as client:
            client.register(SLEEPER, replace=True)
            execution = client.trigger("sleeper")
            wait_until(lambda: client.get_execution(execution.id).status == "running", 30, "up")
            container_id = client.get_execution(execution.id).container_id
            if agent_down:
                own.stop(signal.SIGKILL)
            (monitor,) = conmon_pids(container_id)
            os.kill(monitor, signal.SIGKILL)
            wait_until(lambda: not conmon_pids(container_id), 10, "conmon gone")
        if agent_down:
            own.start()
        with own.client() as client:
            wait_until(lambda: client.get_execution(execution.id).status == "failed", 30, "the end")
            final = client.get_execution(execution.id)
            assert final.failure_reason == "agent_lost", final
            assert "monitor" in final.message and final.exit_code is None, final
            assert settled_leftovers(own, container_id) == []
            # The agent goes on: the next run of the job completes as usual.
            client.register(LONG.replace("sleep 8", "true"), replace=True)
            assert client.wait(client.trigger("long").id).status == "completed"
    finally:
        own.stop()
        sweep(own)


def versioned(word: str) -> str:
    """A job that prints `word`."""
    return (
        "version: v1\ndeployment: versioned\nservices:\n  versioned:\n    rtype: job\n"
        "    image: {name: busybox:latest}\n"
        f"    command: {{entrypoint: [/bin/echo, {word}]}}\n"
    )


def test_a_queued_run_keeps_its_spec_across_a_restart_when_the_job_changed(
    tmp_path: Path, registry: Registry, agent: AgentProcess
) -> None:
    """A run waits for a slot; its job is registered again with another spec; the agent
    dies and comes back. The run is what was triggered, as it would have been with no
    restart; a trigger after the change runs the new spec."""
    own = start_agent(
        tmp_path / "agent", agent.runtime, registry, extra_args=("--max-concurrent", "1")
    )
    try:
        with own.client() as client:
            client.register(SLEEPER, replace=True)
            client.register(versioned("first"), replace=True)
            blocker = client.trigger("sleeper")
            wait_until(lambda: client.get_execution(blocker.id).status == "running", 30, "up")
            queued = client.trigger("versioned")
            client.register(versioned("second"), replace=True)
            assert client.get_execution(queued.id).status == "pending"
        own.stop(signal.SIGKILL)
        own.start()
        with own.client() as client:
            client.cancel(blocker.id, grace=timedelta(seconds=1))
            assert client.wait(queued.id).status == "completed"
            assert [line.message for line in client.logs(queued.id)] == ["first"]
            after = client.wait(client.trigger("versioned").id)
            assert [line.message for line in client.logs(after.id)] == ["second"]
    finally:
        own.stop()
        sweep(own)
