"""The client's own types: what callers see instead of protobuf messages."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import jobs_pb2 as pb

TERMINAL = frozenset({"completed", "failed", "cancelled"})


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    """EXECUTION_STATUS_RUNNING -> "running"; the unspecified value -> ""."""
    name: str = enum.Name(value)
    short = name.removeprefix(prefix).lower()
    return "" if short == "unspecified" else short


def _time(message: Any, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True)
class AttemptInfo:
    """One run of an execution's container."""

    number: int
    container_id: str
    exit_code: int | None
    failure_reason: str
    message: str
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_proto(cls, message: pb.Attempt) -> AttemptInfo:
        """Builds the client type from the wire message."""
        return cls(
            number=message.number,
            container_id=message.container_id,
            exit_code=message.exit_code if message.HasField("exit_code") else None,
            failure_reason=_enum_name(pb.FailureReason, message.failure_reason, "FAILURE_REASON_"),
            message=message.message,
            started_at=_time(message, "started_at"),
            finished_at=_time(message, "finished_at"),
        )


@dataclass(frozen=True)
class Execution:
    """One run of a job."""

    id: str
    job_name: str
    status: str
    exit_code: int | None
    failure_reason: str
    message: str
    trigger: str
    remote_address: str
    container_id: str
    image: str
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    duration: timedelta | None
    queue_position: int = 0
    attempt: int = 1
    attempts: tuple[AttemptInfo, ...] = ()
    # GetExecution only: the trigger's request_id and what it added to the run.
    request_id: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    payload_size: int = 0

    @property
    def terminal(self) -> bool:
        """True once the execution has completed, failed or been cancelled."""
        return self.status in TERMINAL

    @classmethod
    def from_proto(cls, message: pb.Execution) -> Execution:
        """Builds the client type from the wire message."""
        return cls(
            id=message.id,
            job_name=message.job_name,
            status=_enum_name(pb.ExecutionStatus, message.status, "EXECUTION_STATUS_"),
            exit_code=message.exit_code if message.HasField("exit_code") else None,
            failure_reason=_enum_name(pb.FailureReason, message.failure_reason, "FAILURE_REASON_"),
            message=message.message,
            trigger=_enum_name(pb.TriggerKind, message.trigger.kind, "TRIGGER_KIND_"),
            remote_address=message.trigger.remote_address,
            container_id=message.container_id,
            image=message.image,
            created_at=_time(message, "created_at"),
            started_at=_time(message, "started_at"),
            finished_at=_time(message, "finished_at"),
            duration=message.duration.ToTimedelta() if message.HasField("duration") else None,
            queue_position=message.queue_position,
            attempt=message.attempt,
            attempts=tuple(AttemptInfo.from_proto(attempt) for attempt in message.attempts),
            request_id=message.request_id,
            args=tuple(message.dispatch.args),
            env=dict(message.dispatch.env),
            payload_size=message.dispatch.payload_size,
        )


@dataclass(frozen=True)
class ExecutionEvent:
    """One recorded transition of an execution."""

    sequence: int
    time: datetime | None
    execution: Execution
    type: str = "transition"
    step_id: str = ""
    message: str = ""

    @classmethod
    def from_proto(cls, message: pb.ExecutionEvent) -> ExecutionEvent:
        """Builds the client type from the wire message."""
        return cls(
            sequence=message.sequence,
            time=_time(message, "time"),
            execution=Execution.from_proto(message.execution),
            type=_enum_name(pb.EventType, message.type, "EVENT_TYPE_"),
            step_id=message.step_id,
            message=message.message,
        )


@dataclass(frozen=True)
class JobEvent:
    """One recorded event of a job: registered, updated, suspended, a run skipped or missed."""

    sequence: int
    time: datetime | None
    job_name: str
    type: str
    message: str = ""
    schedule_time: datetime | None = None

    @classmethod
    def from_proto(cls, message: pb.JobEvent) -> JobEvent:
        """Builds the client type from the wire message."""
        return cls(
            sequence=message.sequence,
            time=_time(message, "time"),
            job_name=message.job_name,
            type=_enum_name(pb.EventType, message.type, "EVENT_TYPE_"),
            message=message.message,
            schedule_time=_time(message, "schedule_time"),
        )


@dataclass(frozen=True)
class Job:
    """A registered job."""

    name: str
    kind: str
    deployment: str
    image: str
    schedule: str
    created_at: datetime | None
    updated_at: datetime | None
    next_run_time: datetime | None = None
    last_schedule_time: datetime | None = None
    suspended: bool = False
    skipped: int = 0
    missed: int = 0

    @classmethod
    def from_proto(cls, message: pb.Job) -> Job:
        """Builds the client type from the wire message."""
        return cls(
            name=message.name,
            kind=_enum_name(pb.JobKind, message.spec.kind, "JOB_KIND_"),
            deployment=message.spec.deployment,
            image=message.spec.image.name,
            schedule=message.spec.schedule,
            created_at=_time(message, "created_at"),
            updated_at=_time(message, "updated_at"),
            next_run_time=_time(message.cron_status, "next_run_time"),
            last_schedule_time=_time(message.cron_status, "last_schedule_time"),
            suspended=message.cron_status.suspended,
            skipped=message.cron_status.skipped,
            missed=message.cron_status.missed,
        )


@dataclass(frozen=True)
class LogLine:
    """One line of a container's output."""

    time: datetime | None
    stream: str
    message: str
    partial: bool
    truncated: bool = False

    @classmethod
    def from_proto(cls, message: pb.LogLine) -> LogLine:
        """Builds the client type from the wire message."""
        return cls(
            time=_time(message, "time"),
            stream=_enum_name(pb.LogStream, message.stream, "LOG_STREAM_"),
            message=message.message,
            partial=message.partial,
            truncated=message.truncated,
        )


STREAM_NAMES = {pb.LOG_STREAM_STDOUT: "stdout", pb.LOG_STREAM_STDERR: "stderr"}


@dataclass(frozen=True)
class LogBatch:
    """Consecutive output lines, column by column: the i-th line is messages[i], written at
    times_unix_nano[i] to streams[i], a fragment when i is in `partial`."""

    messages: list[str]
    times_unix_nano: list[int]
    streams: list[str]
    partial: frozenset[int] = frozenset()
    # Older output was dropped before the first line.
    truncated: bool = False

    @classmethod
    def from_proto(cls, message: service_pb.StreamLogBatchesResponse) -> LogBatch:
        """Builds the client type from the wire message."""
        return cls(
            messages=list(message.messages),
            times_unix_nano=list(message.times_unix_nano),
            streams=[STREAM_NAMES.get(code, "") for code in message.streams],
            partial=frozenset(message.partial_lines),
            truncated=message.truncated,
        )

    def lines(self) -> Iterator[LogLine]:
        """The lines, one LogLine each."""
        for index, message in enumerate(self.messages):
            seconds, nanos = divmod(self.times_unix_nano[index], 1_000_000_000)
            time = datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)
            yield LogLine(
                time=time,
                stream=self.streams[index],
                message=message,
                partial=index in self.partial,
                truncated=self.truncated and index == 0,
            )


@dataclass(frozen=True)
class LogChunk:
    """Whole records of an attempt's log file as the agent stores it (CRI logging format)."""

    data: bytes
    offset: int
    truncated: bool = False

    @classmethod
    def from_proto(cls, message: pb.LogChunk) -> LogChunk:
        """Builds the client type from the wire message."""
        return cls(data=message.data, offset=message.offset, truncated=message.truncated)


@dataclass(frozen=True)
class Bookmark:
    """A quiet moment on a node watch: every event up to `sequence` was sent."""

    sequence: int


@dataclass(frozen=True)
class NodeInfo:
    """The node as a scheduler sees it: versions, capacity, load and limits."""

    agent_version: str
    runtime: str
    runtime_version: str
    cpus: int
    memory_bytes: int
    active_executions: int
    queued_executions: int
    max_concurrent: int
    last_sequence: int

    @classmethod
    def from_proto(cls, message: Any) -> NodeInfo:
        """Builds the client type from the wire message."""
        return cls(**{name: getattr(message, name) for name in cls.__dataclass_fields__})
