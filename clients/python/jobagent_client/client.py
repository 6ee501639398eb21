"""JobAgentClient: an idiomatic, typed client of jobagent.v1.JobService."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc
from jobagent.v1 import jobs_pb2 as pb

from jobagent_client.local import DEFAULT_ADDRESS
from jobagent_client.models import (
    Bookmark,
    Execution,
    ExecutionEvent,
    Job,
    JobEvent,
    LogBatch,
    LogChunk,
    LogLine,
    NodeInfo,
)

Response = TypeVar("Response")
STREAMS = {"stdout": pb.LOG_STREAM_STDOUT, "stderr": pb.LOG_STREAM_STDERR}


class PlainTextToken(ValueError):
    """A bearer token would be sent without TLS to a host beyond this machine."""


def is_local_target(target: str) -> bool:
    """True for a unix socket and for a loopback host (127.0.0.0/8, ::1, localhost)."""
    if target.startswith("unix:"):
        return True
    host = target.removeprefix("dns:///").rpartition(":")[0] or target
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ClientError(Exception):
    """A call failed: the gRPC code, the server's message and any field it named."""

    code: grpc.StatusCode
    message: str
    field: str = ""
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> ClientError:
        """Reads the status, with BadRequest and ErrorInfo details when present."""
        call: grpc.Call = error  # type: ignore[assignment]
        status = rpc_status.from_call(call)
        field = reason = ""
        for detail in status.details if status is not None else ():
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                if bad_request.field_violations:
                    field = bad_request.field_violations[0].field
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
        return cls(call.code(), call.details() or "", field, reason)


def tls_credentials(
    ca_file: Path | None = None, cert_file: Path | None = None, key_file: Path | None = None
) -> grpc.ChannelCredentials:
    """TLS to the agent: trusting `ca_file` (else the system's roots), presenting a client
    certificate when the agent asks for one (mTLS)."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca_file.read_bytes() if ca_file else None,
        private_key=key_file.read_bytes() if key_file else None,
        certificate_chain=cert_file.read_bytes() if cert_file else None,
    )


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: tuple[tuple[str, str | bytes], ...] | None
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor


class BearerToken(_UnaryUnary, _UnaryStream):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), self._header),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        """Unary calls."""
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        """Server-streaming calls."""
        return continuation(self._with_token(details), request)


class JobAgentClient:
    """Talks to one agent. Methods raise ClientError when a call fails."""

    def __init__(self, channel: grpc.Channel, timeout: float | None = 30.0) -> None:
        self._channel = channel
        self._stub = service_grpc.JobServiceStub(channel)
        self._timeout = timeout

    @classmethod
    def connect(
        cls,
        target: str = DEFAULT_ADDRESS,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
    ) -> JobAgentClient:
        """A client of the agent at `target` (host:port or unix:/PATH): over TLS with
        `credentials` (see `tls_credentials`), else plain text; with a bearer token if given.
        A token goes in plain text only to a unix socket or a loopback address:
        PlainTextToken for any other target without TLS, as the other languages' clients do.
        """
        if token and credentials is None and not is_local_target(target):
            raise PlainTextToken(
                f"a bearer token would cross the network in plain text to {target}: "
                "connect with TLS credentials"
            )
        channel = (
            grpc.insecure_channel(target)
            if credentials is None
            else grpc.secure_channel(target, credentials)
        )
        if token:
            channel = grpc.intercept_channel(channel, BearerToken(token))
        return cls(channel, timeout)

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()

    def __enter__(self) -> JobAgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register(self, spec_yaml: str, replace: bool = False) -> list[Job]:
        """Registers the jobs of a deployment document."""
        request = service_pb.RegisterJobRequest(spec_yaml=spec_yaml, replace=replace)
        response = self._call(self._stub.RegisterJob, request)
        return [Job.from_proto(job) for job in response.jobs]

    def get_job(self, name: str) -> Job:
        """Returns one job."""
        return Job.from_proto(self._call(self._stub.GetJob, service_pb.GetJobRequest(name=name)))

    def list_jobs(self) -> list[Job]:
        """Returns every job, by name, page by page."""
        jobs: list[Job] = []
        token = ""
        while True:
            page, token = self.list_jobs_page(page_token=token)
            jobs.extend(page)
            if not token:
                return jobs

    def list_jobs_page(self, page_size: int = 0, page_token: str = "") -> tuple[list[Job], str]:
        """One page of jobs by name, and the token of the next ("" at the end)."""
        request = service_pb.ListJobsRequest(page_size=page_size, page_token=page_token)
        response = self._call(self._stub.ListJobs, request)
        return [Job.from_proto(job) for job in response.jobs], response.next_page_token

    def suspend(self, name: str) -> Job:
        """Suspends a cron job's schedule."""
        request = service_pb.SuspendJobRequest(name=name)
        return Job.from_proto(self._call(self._stub.SuspendJob, request))

    def resume(self, name: str) -> Job:
        """Resumes a cron job's schedule from its next time."""
        request = service_pb.ResumeJobRequest(name=name)
        return Job.from_proto(self._call(self._stub.ResumeJob, request))

    def unregister(self, name: str) -> None:
        """Removes a job."""
        self._call(self._stub.UnregisterJob, service_pb.UnregisterJobRequest(name=name))

    def trigger(
        self,
        job_name: str,
        from_cli: bool = False,
        request_id: str = "",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        payload: bytes = b"",
    ) -> Execution:
        """Starts a new execution of the job, with dispatch parameters if the job takes them.

        With a request_id the call is idempotent: repeating it returns the same execution.
        """
        origin = (
            service_pb.TRIGGER_ORIGIN_CLI if from_cli else service_pb.TRIGGER_ORIGIN_UNSPECIFIED
        )
        request = service_pb.TriggerJobRequest(
            job_name=job_name,
            origin=origin,
            request_id=request_id,
            args=list(args),
            env=dict(env or {}),
            payload=payload,
        )
        return Execution.from_proto(self._call(self._stub.TriggerJob, request))

    def get_execution(self, execution_id: str) -> Execution:
        """Returns one execution."""
        request = service_pb.GetExecutionRequest(id=execution_id)
        return Execution.from_proto(self._call(self._stub.GetExecution, request))

    def list_executions(
        self, job_name: str = "", statuses: tuple[str, ...] = ()
    ) -> list[Execution]:
        """Returns every execution (of a job, in some statuses), newest first, page by page."""
        executions: list[Execution] = []
        token = ""
        while True:
            page, token = self.list_executions_page(job_name, statuses, page_token=token)
            executions.extend(page)
            if not token:
                return executions

    def list_executions_page(
        self,
        job_name: str = "",
        statuses: tuple[str, ...] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[Execution], str]:
        """One page of executions, newest first, and the token of the next ("" at the end)."""
        request = service_pb.ListExecutionsRequest(
            job_name=job_name,
            statuses=[pb.ExecutionStatus.Value(f"EXECUTION_STATUS_{s.upper()}") for s in statuses],
            page_size=page_size,
            page_token=page_token,
        )
        response = self._call(self._stub.ListExecutions, request)
        page = [Execution.from_proto(execution) for execution in response.executions]
        return page, response.next_page_token

    def cancel(
        self, execution_id: str, grace: timedelta | None = None, signal: str = ""
    ) -> Execution:
        """Cancels an execution and returns it once it is terminal."""
        request = service_pb.CancelExecutionRequest(id=execution_id, stop_signal=signal)
        if grace is not None:
            request.grace_period.CopyFrom(Duration())
            request.grace_period.FromTimedelta(grace)
        return Execution.from_proto(self._call(self._stub.CancelExecution, request, unbounded=True))

    def watch(self, execution_id: str) -> Iterator[ExecutionEvent]:
        """Yields the execution's current state, then every transition to the terminal one."""
        request = service_pb.WatchExecutionRequest(id=execution_id)
        try:
            for event in self._stub.WatchExecution(request):
                yield ExecutionEvent.from_proto(event)
        except grpc.RpcError as error:
            raise ClientError.from_rpc_error(error) from None

    def watch_events(
        self,
        since_sequence: int = 0,
        job_name: str = "",
        types: tuple[str, ...] = (),
        bookmark_interval: timedelta | None = None,
    ) -> Iterator[ExecutionEvent | JobEvent | Bookmark]:
        """Yields every event of the node (of executions and of jobs) after `since_sequence`,
        then each new one, with bookmarks when quiet; resume with the last sequence seen."""
        request = service_pb.WatchEventsRequest(
            since_sequence=since_sequence,
            job_name=job_name,
            types=[pb.EventType.Value(f"EVENT_TYPE_{name.upper()}") for name in types],
        )
        if bookmark_interval is not None:
            request.bookmark_interval.FromTimedelta(bookmark_interval)
        try:
            for item in self._stub.WatchEvents(request):
                if item.HasField("bookmark"):
                    yield Bookmark(item.bookmark.sequence)
                elif item.HasField("job_event"):
                    yield JobEvent.from_proto(item.job_event)
                else:
                    yield ExecutionEvent.from_proto(item.event)
        except grpc.RpcError as error:
            raise ClientError.from_rpc_error(error) from None

    def wait(self, execution_id: str) -> Execution:
        """Blocks until the execution is terminal and returns it."""
        last = None
        for event in self.watch(execution_id):
            last = event.execution
        assert last is not None
        return last

    def logs(
        self,
        execution_id: str,
        follow: bool = False,
        tail_lines: int = 0,
        stream: str = "",
        since: datetime | None = None,
        attempt: int = 0,
    ) -> Iterator[LogLine]:
        """Yields an attempt's output lines (the latest's when 0); with follow, until it ends."""
        batches = self.log_batches(execution_id, follow, tail_lines, stream, since, attempt)
        for batch in batches:
            yield from batch.lines()

    def log_batches(
        self,
        execution_id: str,
        follow: bool = False,
        tail_lines: int = 0,
        stream: str = "",
        since: datetime | None = None,
        attempt: int = 0,
    ) -> Iterator[LogBatch]:
        """logs, many lines at a time (StreamLogBatches): for readers of large logs."""
        request = service_pb.StreamLogBatchesRequest(
            execution_id=execution_id,
            follow=follow,
            tail_lines=tail_lines,
            stream=STREAMS.get(stream, pb.LOG_STREAM_UNSPECIFIED),
            attempt=attempt,
        )
        if since is not None:
            request.since.CopyFrom(Timestamp())
            request.since.FromDatetime(since)
        try:
            for batch in self._stub.StreamLogBatches(request):
                yield LogBatch.from_proto(batch)
        except grpc.RpcError as error:
            raise ClientError.from_rpc_error(error) from None

    def download_logs(
        self, execution_id: str, follow: bool = False, attempt: int = 0, offset: int = 0
    ) -> Iterator[LogChunk]:
        """Yields an attempt's log file (the latest's when 0) as stored, from `offset`, in
        chunks of whole records; with follow, until the attempt ends. To resume, pass the
        last chunk's offset plus the length of its data."""
        request = service_pb.DownloadLogsRequest(
            execution_id=execution_id, follow=follow, attempt=attempt, offset=offset
        )
        try:
            for chunk in self._stub.DownloadLogs(request):
                yield LogChunk.from_proto(chunk)
        except grpc.RpcError as error:
            raise ClientError.from_rpc_error(error) from None

    def node_info(self) -> NodeInfo:
        """Versions, capacity, load and limits of the node."""
        return NodeInfo.from_proto(
            self._call(self._stub.GetNodeInfo, service_pb.GetNodeInfoRequest())
        )

    def prune_images(self) -> tuple[list[str], int]:
        """Removes images no job uses; returns the references removed and the bytes freed."""
        response = self._call(
            self._stub.PruneImages, service_pb.PruneImagesRequest(), unbounded=True
        )
        return list(response.removed), response.freed_bytes

    def _call(
        self, method: Callable[..., Response], request: object, *, unbounded: bool = False
    ) -> Response:
        try:
            return method(request, timeout=None if unbounded else self._timeout)
        except grpc.RpcError as error:
            raise ClientError.from_rpc_error(error) from None
