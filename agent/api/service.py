"""JobService: validates requests, converts messages and delegates to the executor."""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import grpc
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc
from jobagent.v1 import jobs_pb2 as pb

from agent import __version__
from agent.api import convert
from agent.api.errors import maps_errors
from agent.api.identity import caller_identity
from agent.api.limits import StreamSlots
from agent.domain import (
    Bookmark,
    ExecutionDetails,
    ExecutionFilter,
    Job,
    JobEvent,
    JobKind,
    NodeEvent,
)
from agent.errors import FailedPrecondition, InvalidSpec
from agent.executor import Executor
from agent.executor.logs import LogQuery
from agent.executor.scheduler import CronScheduler
from agent.metrics import Metrics
from agent.runtime.errors import RuntimeLayerError
from agent.spec import (
    NAME_PATTERN,
    normalize_signal,
    parse_document,
    service_documents,
    validate_job_spec,
)

MAX_GRACE_SECONDS = 3600
MAX_REQUEST_ID = 128
DEFAULT_BOOKMARK_SECONDS = 30.0
MIN_BOOKMARK_SECONDS = 1.0
# Recent events' wire messages, shared by every watcher (the newest few thousand).
EVENT_MESSAGE_CACHE = 4096
# GetExecution's answers of the executions read lately (as many as the store keeps).
EXECUTION_MESSAGE_CACHE = 1024
EXECUTION_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
Context = grpc.aio.ServicerContext[Any, Any]
Item = TypeVar("Item")
Message = TypeVar("Message")


class JobService(service_grpc.JobServiceServicer):
    """The jobagent.v1.JobService servicer."""

    def __init__(
        self,
        executor: Executor,
        scheduler: CronScheduler,
        *,
        node: NodeFacts | None = None,
        metrics: Metrics | None = None,
        streams: StreamSlots | None = None,
    ) -> None:
        self._executor = executor
        self._scheduler = scheduler
        self._node = node or NodeFacts()
        self._metrics = metrics
        self._streams = streams or StreamSlots()
        self._event_messages: OrderedDict[int, service_pb.WatchEventsResponse] = OrderedDict()
        self._execution_messages: OrderedDict[str, tuple[ExecutionDetails, pb.Execution]] = (
            OrderedDict()
        )

    @contextmanager
    def _open_stream(self, rpc: str, context: Context) -> Iterator[None]:
        """Holds one of the caller's stream slots (ResourceExhausted past a limit) and
        counts the stream as open while the handler runs (a context, not one more layer
        of async generator that every item would pass through). The slot is also given
        back when the call ends, should the handler's generator outlive it."""
        with self._streams.take(caller_identity(context), rpc) as slot:
            # The stubs declare the callback as a class of their own, not a callable.
            context.add_done_callback(slot.release)  # type: ignore[arg-type]
            with nullcontext() if self._metrics is None else self._metrics.open_stream(rpc):
                yield

    async def _stream(
        self,
        rpc: str,
        context: Context,
        items: AsyncIterator[Item],
        to_message: Callable[[Item], Message],
    ) -> AsyncIterator[Message]:
        """The messages of `items`, sent in one of the caller's stream slots (for streams
        of large messages: each passes through this generator too)."""
        with self._open_stream(rpc, context):
            async for item in items:
                yield to_message(item)

    def _job(self, job: Job) -> pb.Job:
        message = convert.job_to_proto(job)
        if job.spec.kind is JobKind.CRON:
            state = self._executor.cron_state(job.name)
            next_run = self._scheduler.next_run(job)
            message.cron_status.CopyFrom(
                convert.cron_status_to_proto(state, next_run, job.spec.cron.suspend)
            )
        return message

    @maps_errors
    async def RegisterJob(
        self, request: service_pb.RegisterJobRequest, context: Context
    ) -> service_pb.RegisterJobResponse:
        source = request.WhichOneof("source")
        documents: dict[str, str] = {}
        if source == "spec_yaml":
            specs = parse_document(request.spec_yaml, self._executor.host_policy)
            documents = service_documents(request.spec_yaml)
        elif source == "spec":
            spec = convert.job_spec_from_proto(request.spec)
            validate_job_spec(spec, self._executor.host_policy)
            specs = [spec]
        else:
            raise InvalidSpec("source", "set spec_yaml or spec")
        jobs = self._executor.register_jobs(specs, documents, request.replace)
        self._scheduler.wake()
        return service_pb.RegisterJobResponse(jobs=[self._job(job) for job in jobs])

    @maps_errors
    async def GetJob(self, request: service_pb.GetJobRequest, context: Context) -> pb.Job:
        _require_name("name", request.name)
        return self._job(self._executor.get_job(request.name))

    @maps_errors
    async def ListJobs(
        self, request: service_pb.ListJobsRequest, context: Context
    ) -> service_pb.ListJobsResponse:
        _check_page_size(request.page_size)
        jobs, token = self._executor.page_jobs(
            request.page_size or DEFAULT_PAGE_SIZE, request.page_token
        )
        return service_pb.ListJobsResponse(
            jobs=[self._job(job) for job in jobs], next_page_token=token
        )

    @maps_errors
    async def UnregisterJob(
        self, request: service_pb.UnregisterJobRequest, context: Context
    ) -> service_pb.UnregisterJobResponse:
        _require_name("name", request.name)
        self._executor.unregister_job(request.name)
        self._scheduler.wake()
        return service_pb.UnregisterJobResponse()

    @maps_errors
    async def TriggerJob(
        self, request: service_pb.TriggerJobRequest, context: Context
    ) -> pb.Execution:
        _require_name("job_name", request.job_name)
        if (
            len(request.request_id) > MAX_REQUEST_ID
            or not request.request_id.isprintable()
            or (not request.request_id.isascii())
        ):
            raise InvalidSpec("request_id", f"at most {MAX_REQUEST_ID} printable ASCII characters")
        trigger = convert.trigger_from_request(request, context.peer())
        # A request_id is the caller's own: another caller's same id is another request.
        trigger_request = replace(
            convert.trigger_request_from_proto(request), caller=caller_identity(context)
        )
        execution = await self._executor.trigger(request.job_name, trigger, trigger_request)
        return convert.execution_to_proto(execution)

    @maps_errors
    async def GetExecution(
        self, request: service_pb.GetExecutionRequest, context: Context
    ) -> pb.Execution:
        _require_id("id", request.id)
        details = self._executor.describe_execution(request.id)
        made = self._execution_messages.get(request.id)
        if made is not None and made[0] is details:
            return made[1]
        # The store hands out the same details until the execution changes (agent.store):
        # the message made of them stands as long. Nothing changes a message once made.
        message = convert.execution_details_to_proto(details)
        self._execution_messages[request.id] = (details, message)
        self._execution_messages.move_to_end(request.id)
        if len(self._execution_messages) > EXECUTION_MESSAGE_CACHE:
            self._execution_messages.popitem(last=False)
        return message

    @maps_errors
    async def ListExecutions(
        self, request: service_pb.ListExecutionsRequest, context: Context
    ) -> service_pb.ListExecutionsResponse:
        _check_page_size(request.page_size)
        _require_name("job_name", request.job_name, optional=True)
        wanted = ExecutionFilter(
            job_name=request.job_name,
            statuses=frozenset(
                convert.STATUS_FROM_PROTO[s]
                for s in request.statuses
                if s in convert.STATUS_FROM_PROTO
            ),
            triggers=frozenset(
                convert.TRIGGER_FROM_PROTO[t]
                for t in request.trigger_kinds
                if t in convert.TRIGGER_FROM_PROTO
            ),
            created_after=convert.from_timestamp(request.created_after, "created_after")
            if request.HasField("created_after")
            else None,
            created_before=convert.from_timestamp(request.created_before, "created_before")
            if request.HasField("created_before")
            else None,
        )
        executions, token = self._executor.page_executions(
            wanted, request.page_size or DEFAULT_PAGE_SIZE, request.page_token
        )
        return service_pb.ListExecutionsResponse(
            executions=[convert.execution_to_proto(execution) for execution in executions],
            next_page_token=token,
        )

    @maps_errors
    async def CancelExecution(
        self, request: service_pb.CancelExecutionRequest, context: Context
    ) -> pb.Execution:
        _require_id("id", request.id)
        grace = None
        if request.HasField("grace_period"):
            grace = convert.duration_seconds(request.grace_period, "grace_period")
            if not 0 <= grace <= MAX_GRACE_SECONDS:
                raise InvalidSpec("grace_period", f"must be between 0 and {MAX_GRACE_SECONDS}s")
        signal = (
            normalize_signal(request.stop_signal, "stop_signal") if request.stop_signal else None
        )
        return convert.execution_to_proto(await self._executor.cancel(request.id, grace, signal))

    @maps_errors
    async def WatchExecution(
        self, request: service_pb.WatchExecutionRequest, context: Context
    ) -> AsyncIterator[pb.ExecutionEvent]:
        _require_id("id", request.id)
        with self._open_stream("WatchExecution", context):
            async for event in self._executor.watch(request.id):
                yield convert.event_to_proto(event)

    @maps_errors
    async def StreamLogs(
        self, request: service_pb.StreamLogsRequest, context: Context
    ) -> AsyncIterator[pb.LogLine]:
        lines = self._executor.stream_logs(
            request.execution_id, self._log_query(request), request.attempt
        )
        async for message in self._stream("StreamLogs", context, lines, convert.log_line_to_proto):
            yield message

    @maps_errors
    async def StreamLogBatches(
        self, request: service_pb.StreamLogBatchesRequest, context: Context
    ) -> AsyncIterator[service_pb.StreamLogBatchesResponse]:
        batches = self._executor.stream_log_batches(
            request.execution_id, self._log_query(request), request.attempt
        )
        async for message in self._stream(
            "StreamLogBatches", context, batches, convert.log_batch_to_proto
        ):
            yield message

    def _log_query(
        self, request: service_pb.StreamLogsRequest | service_pb.StreamLogBatchesRequest
    ) -> LogQuery:
        """The query of a log stream request, once its execution is known to exist."""
        _require_id("execution_id", request.execution_id)
        if request.tail_lines < 0:
            raise InvalidSpec("tail_lines", "must not be negative")
        since = None
        if request.HasField("since"):
            since = convert.from_timestamp(request.since, "since")
        self._executor.get_execution(request.execution_id)
        stream = convert.STREAM_FROM_PROTO.get(request.stream)
        return LogQuery(request.follow, request.tail_lines, stream, since)

    @maps_errors
    async def DownloadLogs(
        self, request: service_pb.DownloadLogsRequest, context: Context
    ) -> AsyncIterator[pb.LogChunk]:
        _require_id("execution_id", request.execution_id)
        if request.offset < 0:
            raise InvalidSpec("offset", "must not be negative")
        self._executor.get_execution(request.execution_id)
        chunks = self._executor.download_logs(
            request.execution_id, request.offset, request.follow, request.attempt
        )
        with self._open_stream("DownloadLogs", context):
            async for chunk in chunks:
                yield convert.log_chunk_to_proto(chunk)

    @maps_errors
    async def WatchEvents(
        self, request: service_pb.WatchEventsRequest, context: Context
    ) -> AsyncIterator[service_pb.WatchEventsResponse]:
        kinds = frozenset(
            convert.EVENT_FROM_PROTO[t] for t in request.types if t in convert.EVENT_FROM_PROTO
        )
        interval = DEFAULT_BOOKMARK_SECONDS
        if request.HasField("bookmark_interval"):
            interval = convert.duration_seconds(request.bookmark_interval, "bookmark_interval")
            if interval <= 0:
                raise InvalidSpec("bookmark_interval", "must be positive")
            # Raised rather than refused: a client that asked for less keeps working, and
            # no watcher can make the agent send more than one bookmark a second.
            interval = max(interval, MIN_BOOKMARK_SECONDS)
        _require_name("job_name", request.job_name, optional=True)
        items = self._executor.watch_events(
            request.since_sequence, request.job_name, kinds, interval
        )
        with self._open_stream("WatchEvents", context):
            # Headers at once: the client knows the watch is in place before any event comes.
            await context.send_initial_metadata(())
            async for item in items:
                if isinstance(item, Bookmark):
                    yield service_pb.WatchEventsResponse(
                        bookmark=service_pb.Bookmark(sequence=item.sequence)
                    )
                else:
                    yield self._event_message(item)

    def _event_message(self, event: NodeEvent) -> service_pb.WatchEventsResponse:
        """The wire message of an event, made once however many watchers it goes to."""
        message = self._event_messages.get(event.sequence)
        if message is None:
            if isinstance(event, JobEvent):
                message = service_pb.WatchEventsResponse(
                    job_event=convert.job_event_to_proto(event)
                )
            else:
                message = service_pb.WatchEventsResponse(event=convert.event_to_proto(event))
            self._event_messages[event.sequence] = message
            if len(self._event_messages) > EVENT_MESSAGE_CACHE:
                self._event_messages.popitem(last=False)
        return message

    @maps_errors
    async def SuspendJob(self, request: service_pb.SuspendJobRequest, context: Context) -> pb.Job:
        return self._set_suspended(request.name, True)

    @maps_errors
    async def ResumeJob(self, request: service_pb.ResumeJobRequest, context: Context) -> pb.Job:
        return self._set_suspended(request.name, False)

    def _set_suspended(self, name: str, suspended: bool) -> pb.Job:
        _require_name("name", name)
        job = self._executor.set_suspended(name, suspended)
        self._scheduler.wake()
        return self._job(job)

    @maps_errors
    async def GetNodeInfo(
        self, request: service_pb.GetNodeInfoRequest, context: Context
    ) -> service_pb.NodeInfo:
        active, queued, limit, last = self._executor.load()
        return service_pb.NodeInfo(
            agent_version=__version__,
            runtime=self._node.runtime,
            runtime_version=self._node.runtime_version,
            cpus=os.cpu_count() or 0,
            memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            active_executions=active,
            queued_executions=queued,
            max_concurrent=limit,
            last_sequence=last,
        )

    @maps_errors
    async def PruneImages(
        self, request: service_pb.PruneImagesRequest, context: Context
    ) -> service_pb.PruneImagesResponse:
        try:
            result = await self._executor.prune_images()
        except RuntimeLayerError as error:
            raise FailedPrecondition(str(error)) from None
        return service_pb.PruneImagesResponse(
            removed=result.removed, freed_bytes=result.freed_bytes
        )


@dataclass(frozen=True)
class NodeFacts:
    """What the agent learnt about its node at start."""

    runtime: str = ""
    runtime_version: str = ""


def _check_page_size(page_size: int) -> None:
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidSpec("page_size", f"must be between 0 and {MAX_PAGE_SIZE}")


def _require(field: str, value: str) -> None:
    if not value:
        raise InvalidSpec(field, "is required")


def _require_name(field: str, value: str, optional: bool = False) -> None:
    """A job name; checked before it reaches the store or a path."""
    if optional and not value:
        return
    _require(field, value)
    if not NAME_PATTERN.fullmatch(value):
        raise InvalidSpec(
            field, "must be a job name: lowercase letters, digits and '-', at most 63 characters"
        )


def _require_id(field: str, value: str) -> None:
    """An execution id (32 hex digits): nothing else may reach a log or bundle path."""
    _require(field, value)
    if not EXECUTION_ID_PATTERN.fullmatch(value):
        raise InvalidSpec(field, "must be an execution id (32 lowercase hex digits)")
