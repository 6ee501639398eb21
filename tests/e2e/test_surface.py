"""The agent's surface as callers meet it: reflection, health, errors, jobctl."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import cast

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc
from jobagent.v1 import jobs_pb2 as pb
from jobagent_client import ClientError
from jobagent_client.models import Bookmark, ExecutionEvent

from tests.e2e.harness import AgentProcess

RPCS = {
    "RegisterJob",
    "GetJob",
    "ListJobs",
    "UnregisterJob",
    "TriggerJob",
    "GetExecution",
    "ListExecutions",
    "CancelExecution",
    "WatchExecution",
    "StreamLogs",
    "PruneImages",
    "SuspendJob",
    "ResumeJob",
    "WatchEvents",
    "GetNodeInfo",
    "DownloadLogs",
    "StreamLogBatches",
}


def test_reflection_describes_and_calls_the_service_without_proto_files(
    agent: AgentProcess,
) -> None:
    with grpc.insecure_channel(agent.target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"jobagent.v1.JobService", "grpc.health.v1.Health"} <= services
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("jobagent.v1.JobService")
        assert {method.name for method in service.methods} == RPCS
        method = service.methods_by_name["GetExecution"]
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/jobagent.v1.JobService/GetExecution",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response_class.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            # Fields by name, as a client that knows only the descriptor sets them.
            call(json_format.ParseDict({"id": "0" * 32}, request_class()), timeout=5)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_health_reports_serving_for_the_node_and_the_service(agent: AgentProcess) -> None:
    with grpc.insecure_channel(agent.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "jobagent.v1.JobService"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_bad_input_names_the_field_in_bad_request_details(agent: AgentProcess) -> None:
    with grpc.insecure_channel(agent.target) as channel:
        stub = service_grpc.JobServiceStub(channel)
        cases = [
            (
                service_pb.RegisterJobRequest(
                    spec_yaml="version: v1\ndeployment: x\nservices:\n"
                    "  a:\n    rtype: job\n    imagee: {name: b}\n"
                ),
                "services.a.imagee",
            ),
            (service_pb.RegisterJobRequest(spec=pb.JobSpec(name="Bad Name")), "spec.name"),
            (service_pb.RegisterJobRequest(), "source"),
        ]
        for request, field in cases:
            with pytest.raises(grpc.RpcError) as caught:
                stub.RegisterJob(request, timeout=5)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            status = rpc_status.from_call(cast(grpc.Call, caught.value))
            assert status is not None
            bad_request = error_details_pb2.BadRequest()
            assert any(detail.Unpack(bad_request) for detail in status.details)
            assert bad_request.field_violations[0].field == field
        with pytest.raises(grpc.RpcError) as caught:
            stub.TriggerJob(service_pb.TriggerJobRequest(), timeout=5)
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_structured_spec_registers_and_runs(agent: AgentProcess) -> None:
    spec = pb.JobSpec(
        name="structured",
        kind=pb.JOB_KIND_JOB,
        image=pb.ImageSpec(name="busybox:latest", pull_policy=pb.PULL_POLICY_NEVER),
        command=pb.CommandSpec(entrypoint=["/bin/echo"], args=["from", "proto"]),
    )
    with agent.client() as client, grpc.insecure_channel(agent.target) as channel:
        stub = service_grpc.JobServiceStub(channel)
        response = stub.RegisterJob(service_pb.RegisterJobRequest(spec=spec, replace=True))
        assert response.jobs[0].spec.image.pull_policy == pb.PULL_POLICY_NEVER
        execution = client.wait(client.trigger("structured").id)
        assert execution.status == "completed"
        assert [line.message for line in client.logs(execution.id)] == ["from proto"]


def jobctl(agent: AgentProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobagent_client.jobctl", "--target", agent.target, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_jobctl_registers_triggers_follows_and_lists(agent: AgentProcess, tmp_path: Path) -> None:
    spec = tmp_path / "cli.yaml"
    spec.write_text(
        "version: v1\ndeployment: cli\nservices:\n  from-cli:\n    rtype: job\n"
        "    image: {name: busybox:latest}\n"
        "    command: {entrypoint: [/bin/sh, -c, 'echo hello; echo oops >&2; exit 4']}\n"
    )
    registered = jobctl(agent, "register", str(spec), "--replace")
    assert registered.returncode == 0, registered.stderr
    assert "from-cli" in registered.stdout

    triggered = jobctl(agent, "trigger", "from-cli", "--follow")
    assert triggered.returncode == 4
    assert triggered.stdout.startswith("hello\n")
    assert "oops" in triggered.stderr
    assert "failed" in triggered.stdout

    listed = jobctl(agent, "-o", "json", "list", "--job", "from-cli")
    executions = json.loads(listed.stdout)
    assert executions[0]["status"] == "failed" and executions[0]["exit_code"] == 4
    assert executions[0]["trigger"] == "cli"

    logs = jobctl(agent, "logs", executions[0]["id"], "--stream", "stdout")
    assert logs.stdout == "hello\n"
    missing = jobctl(agent, "get", "0" * 32)
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr

    events = jobctl(agent, "-o", "json", "events", "--job", "from-cli")
    assert events.returncode == 0, events.stderr
    seen = [json.loads(line) for line in events.stdout.splitlines()]
    assert seen[0]["type"] == "job_registered"
    mine = [event["status"] for event in seen if event.get("id") == executions[0]["id"]]
    assert mine == ["pending", "initializing", "running", "failed"]
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobagent_client.jobctl",
            "--target",
            agent.target,
            "events",
            "--job",
            "from-cli",
            "--follow",
            "--since",
            str(seen[-1]["sequence"]),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        again = jobctl(agent, "trigger", "from-cli", "--wait")
        assert again.returncode == 4
        assert follow.stdout is not None
        assert "pending" in follow.stdout.readline()
    finally:
        follow.kill()
        follow.wait()


def test_a_node_watch_sends_its_headers_before_any_event(agent: AgentProcess) -> None:
    """A watcher learns that its watch is in place without waiting for an event."""
    with agent.client() as client:
        newest = client.node_info().last_sequence
    with grpc.insecure_channel(agent.target) as channel:
        stub = service_grpc.JobServiceStub(channel)
        request = service_pb.WatchEventsRequest(since_sequence=newest, job_name="quiet-job")
        request.bookmark_interval.FromSeconds(600)
        call = stub.WatchEvents(request, timeout=10)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            headers = pool.submit(call.initial_metadata)
            assert headers.result(timeout=5) is not None


def test_watch_events_follows_the_node_and_resumes_without_gap(agent: AgentProcess) -> None:
    with agent.client() as client:
        client.register(
            "version: v1\ndeployment: events\nservices:\n  node-watch:\n    rtype: job\n"
            "    image: {name: busybox:latest}\n    command: {entrypoint: [/bin/true]}\n",
            replace=True,
        )
        items = client.watch_events(
            0, job_name="node-watch", bookmark_interval=timedelta(milliseconds=200)
        )
        bookmark = next(item for item in items if isinstance(item, Bookmark))
        execution = client.trigger("node-watch")
        seen: list[ExecutionEvent] = []
        for item in items:
            if isinstance(item, ExecutionEvent) and item.execution.id == execution.id:
                seen.append(item)
                if item.execution.terminal:
                    break
        assert [event.execution.status for event in seen] == [
            "pending",
            "initializing",
            "running",
            "completed",
        ]
        assert bookmark.sequence < seen[0].sequence
        resumed = client.watch_events(seen[1].sequence, job_name="node-watch")
        again = [next(resumed) for _ in range(2)]
        assert [item.sequence for item in again] == [event.sequence for event in seen[2:]]


def test_node_info_tells_a_scheduler_what_it_needs(agent: AgentProcess) -> None:
    with agent.client() as client:
        info = client.node_info()
    assert info.runtime == agent.runtime
    assert agent.runtime in info.runtime_version.lower()
    assert info.cpus >= 1 and info.memory_bytes > 1 << 28
    assert info.max_concurrent == 10 and info.last_sequence > 0
    assert info.active_executions >= 0 and info.agent_version


def test_executions_come_in_pages_with_filters(agent: AgentProcess) -> None:
    with agent.client() as client:
        client.register(
            "version: v1\ndeployment: pages\nservices:\n  paged:\n    rtype: job\n"
            "    image: {name: busybox:latest}\n    command: {entrypoint: [/bin/true]}\n",
            replace=True,
        )
        triggered = [client.wait(client.trigger("paged").id).id for _ in range(3)]
        page, token = client.list_executions_page("paged", page_size=2)
        assert [e.id for e in page] == triggered[::-1][:2] and token
        rest, end = client.list_executions_page("paged", page_size=2, page_token=token)
        assert [e.id for e in rest] == [triggered[0]] and end == ""
        assert client.list_executions_page("paged", statuses=("failed",)) == ([], "")
        with pytest.raises(ClientError) as caught:
            client.list_executions_page("paged", page_token="not-a-token")
        assert (caught.value.code, caught.value.field) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        )


@pytest.mark.parametrize("cursor", ["9" * 30, str(2**63), "-1"])
def test_a_crafted_page_token_is_invalid_not_internal(agent: AgentProcess, cursor: str) -> None:
    """A caller crafts an executions page token (base64url of `e:` and a cursor) whose
    cursor no row id can be: past SQLite's integer it overflowed in the store and
    answered INTERNAL, with a traceback in the log. It is a bad page_token."""
    token = base64.urlsafe_b64encode(f"e:{cursor}".encode()).decode()
    with agent.client() as client, pytest.raises(ClientError) as caught:
        client.list_executions_page(page_token=token)
    assert (caught.value.code, caught.value.field) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    )
    assert "is not a token this agent gave out" in caught.value.message
