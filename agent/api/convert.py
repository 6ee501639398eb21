"""Conversions between protobuf messages and domain types; nothing else crosses the layer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import jobs_pb2 as pb

from agent.domain import (
    DEFAULT_PAYLOAD_PATH,
    Attempt,
    CommandSpec,
    ConcurrencyPolicy,
    CronPolicy,
    CronState,
    Dispatch,
    DispatchPolicy,
    EventKind,
    Execution,
    ExecutionDetails,
    ExecutionEvent,
    FailureReason,
    ImageSpec,
    Job,
    JobEvent,
    JobKind,
    JobSpec,
    LogBatch,
    LogLine,
    LogStream,
    Mount,
    MountKind,
    PayloadRequirement,
    PullPolicy,
    Resources,
    RetryPolicy,
    Status,
    Trigger,
    TriggerKind,
    TriggerRequest,
    UserNamespace,
)
from agent.errors import InvalidSpec
from agent.executor.logs import LogChunk
from agent.privileges import normalize_capability

STATUS_TO_PROTO = {
    Status.PENDING: pb.EXECUTION_STATUS_PENDING,
    Status.INITIALIZING: pb.EXECUTION_STATUS_INITIALIZING,
    Status.RUNNING: pb.EXECUTION_STATUS_RUNNING,
    Status.COMPLETED: pb.EXECUTION_STATUS_COMPLETED,
    Status.FAILED: pb.EXECUTION_STATUS_FAILED,
    Status.CANCELLED: pb.EXECUTION_STATUS_CANCELLED,
}
REASON_TO_PROTO = {
    FailureReason.IMAGE_PULL: pb.FAILURE_REASON_IMAGE_PULL,
    FailureReason.CREATE: pb.FAILURE_REASON_CREATE,
    FailureReason.START: pb.FAILURE_REASON_START,
    FailureReason.INIT: pb.FAILURE_REASON_INIT,
    FailureReason.EXIT_CODE: pb.FAILURE_REASON_EXIT_CODE,
    FailureReason.OOM_KILLED: pb.FAILURE_REASON_OOM_KILLED,
    FailureReason.DEADLINE_EXCEEDED: pb.FAILURE_REASON_DEADLINE_EXCEEDED,
    FailureReason.AGENT_LOST: pb.FAILURE_REASON_AGENT_LOST,
    FailureReason.AGENT_ERROR: pb.FAILURE_REASON_AGENT_ERROR,
}
TRIGGER_TO_PROTO = {
    TriggerKind.ENDPOINT: pb.TRIGGER_KIND_ENDPOINT,
    TriggerKind.CLI: pb.TRIGGER_KIND_CLI,
    TriggerKind.SCHEDULER: pb.TRIGGER_KIND_SCHEDULER,
    TriggerKind.INTERNAL: pb.TRIGGER_KIND_INTERNAL,
}
POLICY_TO_PROTO = {
    PullPolicy.ALWAYS: pb.PULL_POLICY_ALWAYS,
    PullPolicy.NEWER: pb.PULL_POLICY_NEWER,
    PullPolicy.IF_NOT_PRESENT: pb.PULL_POLICY_IF_NOT_PRESENT,
    PullPolicy.NEVER: pb.PULL_POLICY_NEVER,
}
POLICY_FROM_PROTO = {value: key for key, value in POLICY_TO_PROTO.items()}
KIND_TO_PROTO = {JobKind.JOB: pb.JOB_KIND_JOB, JobKind.CRON: pb.JOB_KIND_CRON}
KIND_FROM_PROTO = {value: key for key, value in KIND_TO_PROTO.items()}
# Each EventKind has the proto value of the same name.
EVENT_TO_PROTO = {kind: pb.EventType.Value(f"EVENT_TYPE_{kind.name}") for kind in EventKind}
PAYLOAD_TO_PROTO = {
    PayloadRequirement.FORBIDDEN: pb.PAYLOAD_REQUIREMENT_UNSPECIFIED,
    PayloadRequirement.OPTIONAL: pb.PAYLOAD_REQUIREMENT_OPTIONAL,
    PayloadRequirement.REQUIRED: pb.PAYLOAD_REQUIREMENT_REQUIRED,
}
PAYLOAD_FROM_PROTO = {value: key for key, value in PAYLOAD_TO_PROTO.items()}
USERNS_TO_PROTO = {
    UserNamespace.PRIVATE: pb.USER_NAMESPACE_UNSPECIFIED,
    UserNamespace.HOST: pb.USER_NAMESPACE_HOST,
}
USERNS_FROM_PROTO = {value: key for key, value in USERNS_TO_PROTO.items()}
CONCURRENCY_TO_PROTO = {
    ConcurrencyPolicy.ALLOW: pb.CONCURRENCY_POLICY_ALLOW,
    ConcurrencyPolicy.FORBID: pb.CONCURRENCY_POLICY_FORBID,
    ConcurrencyPolicy.REPLACE: pb.CONCURRENCY_POLICY_REPLACE,
}
CONCURRENCY_FROM_PROTO = {value: key for key, value in CONCURRENCY_TO_PROTO.items()}
MOUNT_TO_PROTO = {
    MountKind.BIND: pb.MOUNT_TYPE_BIND,
    MountKind.NAMED: pb.MOUNT_TYPE_NAMED,
    MountKind.ANONYMOUS: pb.MOUNT_TYPE_ANONYMOUS,
    MountKind.TMPFS: pb.MOUNT_TYPE_TMPFS,
}
MOUNT_FROM_PROTO = {value: key for key, value in MOUNT_TO_PROTO.items()}
EVENT_FROM_PROTO = {value: key for key, value in EVENT_TO_PROTO.items()}
STATUS_FROM_PROTO = {value: key for key, value in STATUS_TO_PROTO.items()}
TRIGGER_FROM_PROTO = {value: key for key, value in TRIGGER_TO_PROTO.items()}
STREAM_TO_PROTO = {LogStream.STDOUT: pb.LOG_STREAM_STDOUT, LogStream.STDERR: pb.LOG_STREAM_STDERR}
STREAM_FROM_PROTO = {value: key for key, value in STREAM_TO_PROTO.items()}


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime) -> Timestamp:
    """A protobuf Timestamp of an aware datetime.

    By arithmetic rather than Timestamp.FromDatetime, which goes through a time tuple and
    calendar.timegm in Python, several times slower, and an execution's message carries
    several.
    """
    since_epoch = value - EPOCH
    return Timestamp(
        seconds=since_epoch.days * 86_400 + since_epoch.seconds,
        nanos=since_epoch.microseconds * 1_000,
    )


# The ranges that google/protobuf/{timestamp,duration}.proto define (years 1 to 9999, and
# +-10,000 years): a message outside them is the caller's mistake, not the agent's.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
MAX_DURATION_SECONDS = 315_576_000_000
MAX_NANOS = 999_999_999


def from_timestamp(message: Timestamp, path: str = "") -> datetime:
    """An aware UTC datetime of a protobuf Timestamp; InvalidSpec naming `path` when the
    message is not a valid timestamp."""
    if not (
        MIN_TIMESTAMP_SECONDS <= message.seconds <= MAX_TIMESTAMP_SECONDS
        and 0 <= message.nanos <= MAX_NANOS
    ):
        raise InvalidSpec(path, "is not a valid timestamp (years 1 to 9999)")
    return message.ToDatetime(tzinfo=UTC)


def duration_seconds(message: Duration, path: str) -> float:
    """Seconds of a protobuf Duration; InvalidSpec naming `path` when it is not a valid one."""
    seconds, nanos = message.seconds, message.nanos
    if (
        abs(seconds) > MAX_DURATION_SECONDS
        or abs(nanos) > MAX_NANOS
        or (seconds < 0 < nanos)
        or (nanos < 0 < seconds)
    ):
        raise InvalidSpec(path, "is not a valid duration")
    return seconds + nanos / 1e9


def job_spec_to_proto(spec: JobSpec) -> pb.JobSpec:
    """Domain JobSpec -> proto."""
    return pb.JobSpec(
        name=spec.name,
        deployment=spec.deployment,
        kind=KIND_TO_PROTO[spec.kind],
        image=pb.ImageSpec(
            name=spec.image.name, pull_policy=POLICY_TO_PROTO[spec.image.pull_policy]
        ),
        command=pb.CommandSpec(
            entrypoint=spec.command.entrypoint,
            args=spec.command.args,
            workdir=spec.command.workdir,
        ),
        env=dict(spec.env),
        schedule=spec.schedule,
        resources=pb.Resources(
            cpu=spec.resources.cpu,
            memory_bytes=spec.resources.memory_bytes,
            pids_limit=spec.resources.pids_limit,
        ),
        user=spec.user,
        labels=dict(spec.labels),
        timeout=_duration(spec.timeout_seconds),
        stop_signal=spec.stop_signal,
        stop_grace_period=_duration(spec.stop_grace_seconds),
        max_concurrent=spec.max_concurrent,
        max_log_bytes=spec.max_log_bytes,
        storage=[
            pb.Mount(
                type=MOUNT_TO_PROTO[m.kind],
                target=m.target,
                source=m.source,
                readonly=m.readonly,
                size_bytes=m.size_bytes,
                mode=m.mode,
            )
            for m in spec.storage
        ],
        host_network=spec.host_network,
        cron_policy=pb.CronPolicy(
            time_zone=spec.cron.time_zone,
            concurrency_policy=CONCURRENCY_TO_PROTO[spec.cron.concurrency_policy],
            starting_deadline_seconds=spec.cron.starting_deadline_seconds,
            suspend=spec.cron.suspend,
            successful_jobs_history_limit=spec.cron.successful_history_limit,
            failed_jobs_history_limit=spec.cron.failed_history_limit,
        ),
        privileged=spec.privileged,
        capabilities=spec.capabilities,
        user_namespace=USERNS_TO_PROTO[spec.user_namespace],
        dispatch_policy=pb.DispatchPolicy(
            payload=PAYLOAD_TO_PROTO[spec.dispatch.payload],
            payload_path=spec.dispatch.payload_path,
            env=spec.dispatch.env,
            required_env=spec.dispatch.required_env,
            args=spec.dispatch.args,
        ),
        retry_policy=pb.RetryPolicy(
            backoff_limit=spec.retry.backoff_limit,
            initial_delay=_duration(spec.retry.initial_delay_seconds),
            max_delay=_duration(spec.retry.max_delay_seconds),
            fail_exit_codes=spec.retry.fail_exit_codes,
            retry_exit_codes=spec.retry.retry_exit_codes,
        ),
    )


def _user_namespace_from_proto(value: pb.UserNamespace.ValueType) -> UserNamespace:
    """A value this agent does not know is refused rather than read as the default."""
    try:
        return USERNS_FROM_PROTO[value]
    except KeyError:
        raise InvalidSpec("spec.user_namespace", f"{value} is not a UserNamespace") from None


def _duration(seconds: float | None) -> Duration | None:
    if seconds is None:
        return None
    message = Duration()
    message.FromTimedelta(timedelta(seconds=seconds))
    return message


def _seconds(message: Any, field: str, path: str) -> float | None:
    if not message.HasField(field):
        return None
    return duration_seconds(getattr(message, field), f"{path}.{field}")


def job_spec_from_proto(message: pb.JobSpec) -> JobSpec:
    """Proto JobSpec -> domain (validated afterwards by agent.spec)."""
    return JobSpec(
        name=message.name,
        deployment=message.deployment,
        kind=KIND_FROM_PROTO.get(message.kind, JobKind.JOB),
        image=ImageSpec(
            name=message.image.name,
            pull_policy=POLICY_FROM_PROTO.get(message.image.pull_policy, PullPolicy.IF_NOT_PRESENT),
        ),
        command=CommandSpec(
            entrypoint=tuple(message.command.entrypoint),
            args=tuple(message.command.args),
            workdir=message.command.workdir,
        ),
        env=dict(message.env),
        schedule=message.schedule,
        resources=Resources(
            cpu=message.resources.cpu if message.resources.HasField("cpu") else None,
            memory_bytes=(
                message.resources.memory_bytes
                if message.resources.HasField("memory_bytes")
                else None
            ),
            pids_limit=(
                message.resources.pids_limit if message.resources.HasField("pids_limit") else None
            ),
        ),
        user=message.user,
        labels=dict(message.labels),
        timeout_seconds=_seconds(message, "timeout", "spec"),
        stop_signal=message.stop_signal,
        stop_grace_seconds=_seconds(message, "stop_grace_period", "spec"),
        max_concurrent=message.max_concurrent if message.HasField("max_concurrent") else None,
        retry=_retry_from_proto(message.retry_policy),
        max_log_bytes=message.max_log_bytes if message.HasField("max_log_bytes") else None,
        storage=tuple(
            _mount_from_proto(mount, f"spec.storage[{index}]")
            for index, mount in enumerate(message.storage)
        ),
        host_network=message.host_network,
        cron=_cron_from_proto(message.cron_policy),
        privileged=message.privileged,
        user_namespace=_user_namespace_from_proto(message.user_namespace),
        capabilities=tuple(
            normalize_capability(name, f"spec.capabilities[{index}]")
            for index, name in enumerate(message.capabilities)
        ),
        dispatch=DispatchPolicy(
            payload=PAYLOAD_FROM_PROTO.get(
                message.dispatch_policy.payload, PayloadRequirement.FORBIDDEN
            ),
            payload_path=message.dispatch_policy.payload_path or DEFAULT_PAYLOAD_PATH,
            env=tuple(message.dispatch_policy.env),
            required_env=tuple(message.dispatch_policy.required_env),
            args=message.dispatch_policy.args,
        ),
    )


def _cron_from_proto(message: pb.CronPolicy) -> CronPolicy:
    defaults = CronPolicy()
    return CronPolicy(
        time_zone=message.time_zone or defaults.time_zone,
        concurrency_policy=CONCURRENCY_FROM_PROTO.get(
            message.concurrency_policy, defaults.concurrency_policy
        ),
        starting_deadline_seconds=message.starting_deadline_seconds
        if message.HasField("starting_deadline_seconds")
        else None,
        suspend=message.suspend,
        successful_history_limit=message.successful_jobs_history_limit
        if message.HasField("successful_jobs_history_limit")
        else defaults.successful_history_limit,
        failed_history_limit=message.failed_jobs_history_limit
        if message.HasField("failed_jobs_history_limit")
        else defaults.failed_history_limit,
    )


def cron_status_to_proto(
    state: CronState, next_run: datetime | None, suspended: bool
) -> pb.CronStatus:
    """The scheduler's view of a cron job -> proto."""
    message = pb.CronStatus(
        last_execution_id=state.last_execution_id,
        suspended=suspended,
        skipped=state.skipped,
        missed=state.missed,
    )
    if next_run is not None:
        message.next_run_time.CopyFrom(timestamp(next_run))
    if state.last_schedule_time is not None:
        message.last_schedule_time.CopyFrom(timestamp(state.last_schedule_time))
    return message


def _mount_from_proto(message: pb.Mount, path: str) -> Mount:
    if message.type not in MOUNT_FROM_PROTO:
        raise InvalidSpec(f"{path}.type", "is required")
    return Mount(
        kind=MOUNT_FROM_PROTO[message.type],
        target=message.target,
        source=message.source,
        readonly=message.readonly,
        size_bytes=message.size_bytes if message.HasField("size_bytes") else None,
        mode=message.mode if message.HasField("mode") else None,
    )


def _retry_from_proto(message: pb.RetryPolicy) -> RetryPolicy:
    defaults = RetryPolicy()
    initial = _seconds(message, "initial_delay", "spec.retry_policy")
    maximum = _seconds(message, "max_delay", "spec.retry_policy")
    return RetryPolicy(
        backoff_limit=message.backoff_limit,
        initial_delay_seconds=defaults.initial_delay_seconds if initial is None else initial,
        max_delay_seconds=defaults.max_delay_seconds if maximum is None else maximum,
        fail_exit_codes=tuple(message.fail_exit_codes),
        retry_exit_codes=tuple(message.retry_exit_codes),
    )


def attempt_to_proto(attempt: Attempt) -> pb.Attempt:
    """Domain Attempt -> proto."""
    message = pb.Attempt(
        number=attempt.number,
        container_id=attempt.container_id,
        started_at=timestamp(attempt.started_at),
        message=attempt.message,
    )
    if attempt.finished_at is not None:
        message.finished_at.CopyFrom(timestamp(attempt.finished_at))
    if attempt.exit_code is not None:
        message.exit_code = attempt.exit_code
    if attempt.failure_reason is not None:
        message.failure_reason = REASON_TO_PROTO[attempt.failure_reason]
    return message


def job_to_proto(job: Job) -> pb.Job:
    """Domain Job -> proto."""
    return pb.Job(
        name=job.name,
        spec=job_spec_to_proto(job.spec),
        spec_yaml=job.spec_yaml,
        created_at=timestamp(job.created_at),
        updated_at=timestamp(job.updated_at),
    )


def execution_to_proto(execution: Execution) -> pb.Execution:
    """Domain Execution -> proto."""
    message = pb.Execution(
        id=execution.id,
        job_name=execution.job_name,
        status=STATUS_TO_PROTO[execution.status],
        message=execution.message,
        trigger=pb.Trigger(
            kind=TRIGGER_TO_PROTO[execution.trigger.kind],
            remote_address=execution.trigger.remote_address,
            reason=execution.trigger.reason,
        ),
        container_id=execution.container_id,
        created_at=timestamp(execution.created_at),
        image=execution.image,
        queue_position=execution.queue_position,
        attempt=execution.attempt,
    )
    if execution.exit_code is not None:
        message.exit_code = execution.exit_code
    if execution.failure_reason is not None:
        message.failure_reason = REASON_TO_PROTO[execution.failure_reason]
    if execution.started_at is not None:
        message.started_at.CopyFrom(timestamp(execution.started_at))
    if execution.finished_at is not None:
        message.finished_at.CopyFrom(timestamp(execution.finished_at))
    duration = execution.duration
    if duration is not None:
        message.duration.FromTimedelta(duration)
    return message


def execution_details_to_proto(details: ExecutionDetails) -> pb.Execution:
    """Domain ExecutionDetails -> proto: the execution with its attempts, request_id and
    dispatch parameters."""
    message = execution_to_proto(details.execution)
    message.attempts.extend(attempt_to_proto(attempt) for attempt in details.attempts)
    message.request_id = details.request.request_id
    if not details.request.dispatch.empty:
        message.dispatch.CopyFrom(dispatch_to_proto(details.request.dispatch))
    return message


def event_to_proto(event: ExecutionEvent) -> pb.ExecutionEvent:
    """Domain ExecutionEvent -> proto."""
    return pb.ExecutionEvent(
        sequence=event.sequence,
        time=timestamp(event.time),
        execution=execution_to_proto(event.execution),
        type=EVENT_TO_PROTO[event.kind],
        step_id=event.step_id,
        message=event.message,
    )


def job_event_to_proto(event: JobEvent) -> pb.JobEvent:
    """Domain JobEvent -> proto."""
    message = pb.JobEvent(
        sequence=event.sequence,
        time=timestamp(event.time),
        job_name=event.job_name,
        type=EVENT_TO_PROTO[event.kind],
        message=event.message,
    )
    if event.schedule_time is not None:
        message.schedule_time.CopyFrom(timestamp(event.schedule_time))
    return message


def log_line_to_proto(line: LogLine) -> pb.LogLine:
    """Domain LogLine -> proto."""
    return pb.LogLine(
        time=timestamp(line.time),
        stream=STREAM_TO_PROTO[line.stream],
        message=line.message,
        partial=line.partial,
        truncated=line.truncated,
    )


def log_batch_to_proto(batch: LogBatch) -> service_pb.StreamLogBatchesResponse:
    """Domain LogBatch -> proto, column by column."""
    message = service_pb.StreamLogBatchesResponse(truncated=batch.truncated)
    message.messages.extend(batch.messages)
    message.times_unix_nano.extend(batch.times)
    codes = STREAM_TO_PROTO
    message.streams.extend([codes[stream] for stream in batch.streams])
    message.partial_lines.extend(batch.partial)
    return message


def log_chunk_to_proto(chunk: LogChunk) -> pb.LogChunk:
    """A chunk of a stored log file -> proto."""
    return pb.LogChunk(data=chunk.data, offset=chunk.offset, truncated=chunk.truncated)


def trigger_request_from_proto(request: service_pb.TriggerJobRequest) -> TriggerRequest:
    """The request_id and dispatch parameters of a TriggerJob call."""
    return TriggerRequest(
        request_id=request.request_id,
        dispatch=Dispatch(tuple(request.args), dict(request.env), request.payload),
    )


def dispatch_to_proto(dispatch: Dispatch) -> pb.Dispatch:
    """What a trigger added -> proto (the payload by its size only)."""
    return pb.Dispatch(
        args=dispatch.args, env=dict(dispatch.env), payload_size=len(dispatch.payload)
    )


def trigger_from_request(request: service_pb.TriggerJobRequest, peer: str) -> Trigger:
    """The trigger of a TriggerJob call, with the caller's peer address."""
    kind = (
        TriggerKind.CLI if request.origin == service_pb.TRIGGER_ORIGIN_CLI else TriggerKind.ENDPOINT
    )
    return Trigger(kind=kind, remote_address=peer)
