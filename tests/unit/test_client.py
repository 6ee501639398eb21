"""The Python client against grpcio-testing's fake channel: requests out, types back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import timedelta
from typing import Any, TypeVar

import grpc
import grpc_testing
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, error_details_pb2, status_pb2
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import jobs_pb2 as pb
from jobagent_client import ClientError, JobAgentClient, PlainTextToken
from jobagent_client.jobctl import COMMANDS

SERVICE = service_pb.DESCRIPTOR.services_by_name["JobService"]
Result = TypeVar("Result")


@pytest.fixture
def channel() -> Any:
    return grpc_testing.channel([SERVICE], grpc_testing.strict_real_time())


def in_thread(call: Callable[[], Result]) -> Future[Result]:
    future: Future[Result] = Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as error:
            future.set_exception(error)

    threading.Thread(target=run, daemon=True).start()
    return future


def method(name: str) -> Any:
    return SERVICE.methods_by_name[name]


def test_trigger_sends_the_job_and_origin_and_returns_a_typed_execution(channel: Any) -> None:
    client = JobAgentClient(channel)
    future = in_thread(lambda: client.trigger("backup", from_cli=True))
    _, request, rpc = channel.take_unary_unary(method("TriggerJob"))
    assert request.job_name == "backup"
    assert request.origin == service_pb.TRIGGER_ORIGIN_CLI
    created = Timestamp(seconds=1_800_000_000)
    rpc.terminate(
        pb.Execution(
            id="e1",
            job_name="backup",
            status=pb.EXECUTION_STATUS_FAILED,
            exit_code=3,
            failure_reason=pb.FAILURE_REASON_EXIT_CODE,
            trigger=pb.Trigger(kind=pb.TRIGGER_KIND_CLI, remote_address="ipv4:127.0.0.1:9"),
            created_at=created,
        ),
        (),
        grpc.StatusCode.OK,
        "",
    )
    execution = future.result(timeout=5)
    assert (execution.status, execution.exit_code, execution.failure_reason) == (
        "failed",
        3,
        "exit_code",
    )
    assert execution.trigger == "cli" and execution.remote_address == "ipv4:127.0.0.1:9"
    assert execution.terminal
    assert execution.started_at is None
    assert execution.created_at is not None and execution.created_at.year == 2027


def test_errors_carry_code_message_and_field(channel: Any) -> None:
    client = JobAgentClient(channel)
    future = in_thread(lambda: client.register("version: v2"))
    _, request, rpc = channel.take_unary_unary(method("RegisterJob"))
    assert request.spec_yaml == "version: v2"
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="version: must be v1")
    violation = error_details_pb2.BadRequest.FieldViolation(field="version", description="v1")
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason="INVALID_ARGUMENT"))
    rpc.terminate(
        None,
        (("grpc-status-details-bin", status.SerializeToString()),),
        grpc.StatusCode.INVALID_ARGUMENT,
        "version: must be v1",
    )
    with pytest.raises(ClientError) as caught:
        future.result(timeout=5)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "version"
    assert caught.value.reason == "INVALID_ARGUMENT"


def test_cancel_sends_the_grace_period(channel: Any) -> None:
    client = JobAgentClient(channel)
    future = in_thread(lambda: client.cancel("e1", grace=timedelta(seconds=2.5)))
    _, request, rpc = channel.take_unary_unary(method("CancelExecution"))
    assert request.id == "e1"
    assert request.grace_period.ToTimedelta() == timedelta(seconds=2.5)
    rpc.terminate(
        pb.Execution(id="e1", status=pb.EXECUTION_STATUS_CANCELLED), (), grpc.StatusCode.OK, ""
    )
    assert future.result(timeout=5).status == "cancelled"


def test_logs_stream_typed_lines_with_the_query(channel: Any) -> None:
    client = JobAgentClient(channel)

    def read() -> list[tuple[str, str, bool, bool]]:
        lines: Iterator[Any] = client.logs("e1", follow=True, tail_lines=5, stream="stderr")
        return [(line.stream, line.message, line.partial, line.truncated) for line in lines]

    future = in_thread(read)
    _, request, rpc = channel.take_unary_stream(method("StreamLogBatches"))
    assert (request.execution_id, request.follow, request.tail_lines) == ("e1", True, 5)
    assert request.stream == pb.LOG_STREAM_STDERR
    first = service_pb.StreamLogBatchesResponse(
        messages=["schema locked", "start"],
        times_unix_nano=[1_700_000_000_123_456_789, 1_700_000_001_000_000_000],
        streams=[pb.LOG_STREAM_STDERR, pb.LOG_STREAM_STDOUT],
        partial_lines=[1],
        truncated=True,
    )
    rpc.send_response(first)
    second = service_pb.StreamLogBatchesResponse(
        messages=["ing"],
        times_unix_nano=[1_700_000_002_000_000_000],
        streams=[pb.LOG_STREAM_STDOUT],
    )
    rpc.send_response(second)
    rpc.terminate((), grpc.StatusCode.OK, "")
    assert future.result(timeout=5) == [
        ("stderr", "schema locked", False, True),
        ("stdout", "start", True, False),
        ("stdout", "ing", False, False),
    ]


def test_wait_follows_the_watch_to_the_terminal_event(channel: Any) -> None:
    client = JobAgentClient(channel)
    future = in_thread(lambda: client.wait("e1"))
    _, request, rpc = channel.take_unary_stream(method("WatchExecution"))
    assert request.id == "e1"
    for sequence, status in enumerate(
        (pb.EXECUTION_STATUS_RUNNING, pb.EXECUTION_STATUS_COMPLETED), start=7
    ):
        rpc.send_response(
            pb.ExecutionEvent(sequence=sequence, execution=pb.Execution(id="e1", status=status))
        )
    rpc.terminate((), grpc.StatusCode.OK, "")
    assert future.result(timeout=5).status == "completed"


def test_a_stream_error_becomes_a_client_error(channel: Any) -> None:
    client = JobAgentClient(channel)
    future = in_thread(lambda: list(client.watch("missing")))
    _, _, rpc = channel.take_unary_stream(method("WatchExecution"))
    rpc.terminate((), grpc.StatusCode.NOT_FOUND, "execution 'missing' does not exist")
    with pytest.raises(ClientError) as caught:
        future.result(timeout=5)
    assert caught.value.code is grpc.StatusCode.NOT_FOUND


def test_jobctl_has_a_command_for_every_rpc() -> None:
    covered = {
        "RegisterJob": "register",
        "GetJob": "job",
        "ListJobs": "jobs",
        "UnregisterJob": "unregister",
        "SuspendJob": "suspend",
        "ResumeJob": "resume",
        "TriggerJob": "trigger",
        "GetExecution": "get",
        "ListExecutions": "list",
        "CancelExecution": "cancel",
        "WatchExecution": "watch",
        "WatchEvents": "events",
        "StreamLogs": "logs",
        "StreamLogBatches": "logs",
        "DownloadLogs": "download",
        "PruneImages": "prune-images",
        "GetNodeInfo": "node",
    }
    assert set(covered) == set(SERVICE.methods_by_name)
    assert set(covered.values()) <= set(COMMANDS)


LOCAL_TARGETS = ("unix:/run/a.sock", "127.0.0.1:50051", "[::1]:50051", "localhost:1", "127.8.0.1:1")


def test_a_token_is_sent_in_plain_text_only_to_this_machine() -> None:
    for target in LOCAL_TARGETS:
        with JobAgentClient.connect(target, token="t" * 20):
            pass
    for target in ("10.0.0.1:50051", "agent.example:50051", "[2001:db8::1]:50051"):
        with pytest.raises(PlainTextToken, match="plain text"):
            JobAgentClient.connect(target, token="t" * 20)
        JobAgentClient.connect(target).close()
