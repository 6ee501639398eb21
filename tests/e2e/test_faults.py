"""Faults: each ends the execution Failed with its reason, the agent keeps serving, and
nothing is left running or mounted."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc
from jobagent_client import ClientError, JobAgentClient
from jobagent_client.models import JobEvent

from tests.e2e.conftest import RUNTIMES, running_agent, start_agent
from tests.e2e.harness import (
    AgentProcess,
    Registry,
    configured_image,
    free_port,
    set_stop_signal,
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
    wait_until(
        lambda: not any(paths.bundles.iterdir()) and not any(paths.writable.iterdir()),
        10,
        "no bundle or writable layer left",
    )


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
    wait_until(
        lambda: client.get_execution(execution.id).status == "initializing", 10, "initializing"
    )
    cancelled = client.cancel(execution.id)
    assert cancelled.status == "cancelled"


def test_a_registry_that_hangs_fails_the_pull_after_the_pull_timeout(
    tmp_path: Path, registry: Registry, blackhole: str
) -> None:
    flags = ("--pull-timeout", "2s")
    hung = job("hung-pull", f"{blackhole}/busybox:1")
    agent = running_agent(tmp_path / "agent", RUNTIMES[0], registry, extra_args=flags)
    with agent as own, own.client() as client:
        reason, message = fails(client, hung, "hung-pull")
    assert reason == "image_pull"
    assert "timed out after 2s" in message


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


BOGUS_STOP_SIGNAL = "--config.stopsignal=SIGBOGUS"


def sleeper(name: str, image: str, extra: str = "") -> str:
    """A job whose process ignores SIGTERM (pid 1 without a handler) and sleeps on."""
    return job(name, image, extra).replace("[/bin/echo, hi]", "[/bin/sleep, '600']")


def bogus_stop_image(example_image: Path, tmp_path: Path, registry: Registry) -> str:
    """The example image with StopSignal SIGBOGUS, pushed to the loopback registry."""
    layout = configured_image(example_image, tmp_path / "bogus", BOGUS_STOP_SIGNAL)
    return registry.push(layout, "busybox:bogus-stop")


def wait_running(client: JobAgentClient, execution_id: str) -> str:
    """Waits for the execution to run; returns its container's id."""
    wait_until(
        lambda: client.get_execution(execution_id).status == "running", 60, "the run to start"
    )
    return client.get_execution(execution_id).container_id


def test_an_image_stop_signal_that_is_not_a_signal_cannot_defeat_a_cancel(
    client: JobAgentClient,
    agent: AgentProcess,
    registry: Registry,
    example_image: Path,
    tmp_path: Path,
) -> None:
    """A hostile image sets StopSignal SIGBOGUS: copied into the bundle, the runtime's
    kill refused it, the cancel answered INTERNAL and the run went on for good. The agent
    drops it (saying so, naming the image): the cancel sends SIGTERM, then SIGKILL after
    the grace period, and the run ends Cancelled."""
    image = bogus_stop_image(example_image, tmp_path, registry)
    client.register(sleeper("unstoppable", image), replace=True)
    execution = client.trigger("unstoppable")
    container_id = wait_running(client, execution.id)
    cancelled = client.cancel(execution.id, grace=timedelta(seconds=1))
    assert (cancelled.status, cancelled.message) == ("cancelled", "cancelled on request")
    assert settled_leftovers(agent, container_id) == []
    warning = f"image {image}: its StopSignal 'SIGBOGUS' is not a signal; its containers get"
    assert warning in agent.log_file.read_text()


def test_an_image_stop_signal_that_is_not_a_signal_cannot_defeat_the_deadline(
    client: JobAgentClient, registry: Registry, example_image: Path, tmp_path: Path
) -> None:
    """The same image with `timeout: 3s`: the run ended AGENT_ERROR (`invalid signal:
    SIGBOGUS`) instead of DEADLINE_EXCEEDED; now the deadline stops it as any other."""
    image = bogus_stop_image(example_image, tmp_path, registry)
    client.register(sleeper("overtime", image, "    timeout: 3s\n"), replace=True)
    final = client.wait(client.trigger("overtime").id)
    assert (final.status, final.failure_reason) == ("failed", "deadline_exceeded")


def test_a_stop_signal_the_runtime_refuses_is_followed_by_sigkill(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    """A container whose bundle names a signal the runtime refuses (written by an agent
    that copied an image's StopSignal unchecked, and adopted as it is): the cancel goes
    on to SIGKILL at once, however long its grace period, instead of answering INTERNAL
    and leaving the run going."""
    client.register(sleeper("adopted", "busybox:latest"), replace=True)
    execution = client.trigger("adopted")
    container_id = wait_running(client, execution.id)
    set_stop_signal(agent, container_id, "SIGBOGUS")
    cancelled = client.cancel(execution.id, grace=timedelta(seconds=300))
    assert (cancelled.status, cancelled.message) == ("cancelled", "cancelled on request")
    assert settled_leftovers(agent, container_id) == []
    assert f"container {container_id}: the stop signal SIGBOGUS failed" in (
        agent.log_file.read_text()
    )


TICKER = (
    "version: v1\ndeployment: faults\nservices:\n  ticker:\n    rtype: cron\n"
    "    schedule: '* * * * * *'\n    concurrency_policy: forbid\n"
    "    image: {name: busybox:latest}\n    command: {entrypoint: [/bin/true]}\n"
)
BAD_TIME_ZONE = {
    "spec": {
        "name": "badtz",
        "kind": "JOB_KIND_CRON",
        "schedule": "* * * * *",
        "image": {"name": "busybox:latest"},
        "cron_policy": {"time_zone": "No/Such"},
    }
}


def runs_of(client: JobAgentClient, name: str) -> int:
    return len(client.list_executions(name))


def test_a_bad_stored_job_stops_no_other_cron_job_and_no_listing(
    tmp_path: Path, registry: Registry
) -> None:
    own = start_agent(tmp_path / "agent", RUNTIMES[0], registry)
    try:
        with grpc.insecure_channel(own.target) as channel:
            stub = service_grpc.JobServiceStub(channel)
            request = json_format.ParseDict(BAD_TIME_ZONE, service_pb.RegisterJobRequest())
            with pytest.raises(grpc.RpcError) as refused:
                stub.RegisterJob(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "spec.cron_policy.time_zone" in (refused.value.details() or "")
        with own.client() as client:
            client.register(TICKER)
        own.stop()
        # As an older agent (or a hand) left them: one row with a time zone that does not
        # exist, one that is not even JSON.
        database = sqlite3.connect(own.cwd / own.data_dir / "agent.db")
        with contextlib.closing(database), database as db:
            (text,) = db.execute("SELECT spec FROM jobs WHERE name = 'ticker'").fetchone()
            spec = json.loads(text)["spec"]
            spec.update(name="badtz")
            spec["cron"]["time_zone"] = "No/Such"
            plain = json.loads(text)["spec"]
            plain.update(name="badenv", kind="job", schedule="", env={"1-BAD": "x"})
            rows = {
                name: json.dumps({**json.loads(text), "spec": changed})
                for name, changed in (("badtz", spec), ("badenv", plain))
            }
            rows["garbled"] = "{not"
            for name, text in rows.items():
                db.execute(
                    "INSERT INTO jobs (name, spec, spec_yaml, created_at, updated_at) "
                    "SELECT ?, ?, '', created_at, updated_at FROM jobs WHERE name = 'ticker'",
                    (name, text),
                )
        own.start()
        with own.client() as client:
            assert [job.name for job in client.list_jobs()] == ["badenv", "badtz", "ticker"]
            # Suspended at start, still read; the reason is in the log and in a job event.
            assert client.get_job("badtz").next_run_time is None
            assert client.get_job("badtz").suspended
            assert client.get_job("badenv").kind == "job"
            assert client.get_job("ticker").next_run_time is not None
            for name in ("badtz", "badenv"):
                with pytest.raises(ClientError) as suspended:
                    client.trigger(name)
                assert suspended.value.code == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(ClientError) as suspended:
                client.resume("badtz")
            assert suspended.value.code == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(ClientError) as lost:
                client.get_job("garbled")
            assert lost.value.code == grpc.StatusCode.DATA_LOSS
            # Valid, but its day never comes: only this job is marked.
            client.register(TICKER.replace("ticker", "never").replace("* * * * * *", "0 0 30 2 *"))
            assert client.get_job("never").next_run_time is None
            missed = client.watch_events(0, job_name="never", types=("schedule_missed",))
            never = next(iter(missed))
            assert isinstance(never, JobEvent) and "cannot be scheduled" in never.message
            before = runs_of(client, "ticker")
            wait_until(lambda: runs_of(client, "ticker") >= before + 2, 15, "the ticker to fire")
            assert runs_of(client, "badtz") == 0
            marked = next(iter(client.watch_events(0, job_name="badtz")))
            assert isinstance(marked, JobEvent) and marked.type == "job_suspended"
            assert "spec.cron_policy.time_zone" in marked.message and "No/Such" in marked.message
            marked = next(iter(client.watch_events(0, job_name="badenv")))
            assert isinstance(marked, JobEvent) and marked.type == "job_suspended"
            assert "spec.env.1-BAD" in marked.message
            log = own.log_file.read_text()
            assert "job badenv suspended at start: its stored spec no longer validates" in log
            client.unregister("garbled")
            listed = [job.name for job in client.list_jobs()]
            assert listed == ["badenv", "badtz", "never", "ticker"]
    finally:
        own.stop()
        sweep(own)


def nasty_requests() -> list[tuple[str, Any]]:
    """Requests a careless or hostile caller sends: each must be refused by a deliberate
    code, never UNKNOWN or INTERNAL."""
    spec = {"name": "nasty", "image": {"name": "busybox:latest"}}
    cron = {**spec, "kind": "JOB_KIND_CRON", "schedule": "* * * * *"}
    specs = [
        BAD_TIME_ZONE["spec"],
        {**cron, "schedule": "0 0 31 2 *", "cron_policy": {"starting_deadline_seconds": "NaN"}},
        {**spec, "image": {"name": "--help"}},
        {**spec, "resources": {"cpu": "NaN", "memory_bytes": "-1"}},
        {**spec, "timeout": "-315576000000s"},
        {**spec, "command": {"workdir": "/../..", "args": ["\u0000"]}},
        {**spec, "storage": [{"type": "MOUNT_TYPE_BIND", "source": "/", "target": "/"}]},
        {**spec, "dispatch_policy": {"payload_path": "../../etc/shadow"}},
    ]
    requests: list[tuple[str, Any]] = [
        ("RegisterJob", json_format.ParseDict({"spec": body}, service_pb.RegisterJobRequest()))
        for body in specs
    ]
    watch = service_pb.WatchEventsRequest(since_sequence=2**63)
    bookmark = service_pb.WatchEventsRequest()
    bookmark.bookmark_interval.seconds, bookmark.bookmark_interval.nanos = 1, -1
    streams = service_pb.StreamLogsRequest(execution_id="0" * 32)
    streams.since.seconds = 10**15
    listed = service_pb.ListExecutionsRequest()
    listed.created_after.seconds = -(10**15)
    cancel = service_pb.CancelExecutionRequest(id="0" * 32)
    cancel.grace_period.seconds = 10**17
    requests += [
        ("WatchEvents", watch),
        ("WatchEvents", bookmark),
        ("StreamLogs", streams),
        ("ListExecutions", listed),
        ("CancelExecution", cancel),
        ("GetExecution", service_pb.GetExecutionRequest(id="../" * 10)),
        ("TriggerJob", service_pb.TriggerJobRequest(job_name="x" * 10_000)),
    ]
    return requests


def test_nasty_requests_are_refused_deliberately_and_the_node_keeps_serving(
    agent: AgentProcess,
) -> None:
    with grpc.insecure_channel(agent.target) as channel:
        for method, request in nasty_requests():
            call = getattr(service_grpc.JobServiceStub(channel), method)
            try:
                answer = call(request, timeout=5)
                if method in ("WatchEvents", "StreamLogs"):
                    next(iter(answer))
            except grpc.RpcError as error:
                code = error.code()
                assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
                    f"{method}({request}) answered {code}: {error}"
                )
            else:
                raise AssertionError(f"{method}({request}) was accepted")
    assert agent.serving()
    with agent.client() as client:
        assert "nasty" not in {job.name for job in client.list_jobs()}
