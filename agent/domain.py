"""Domain types shared by every layer: plain, typed, immutable dataclasses.

Protobuf classes never appear below agent/api; these types do.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any


class JobKind(enum.Enum):
    """How a job is started."""

    JOB = "job"
    CRON = "cron"


class PullPolicy(enum.Enum):
    """When the agent pulls a job's image (the seed's policies)."""

    ALWAYS = "always"
    NEWER = "newer"
    IF_NOT_PRESENT = "if_not_present"
    NEVER = "never"


class Status(enum.Enum):
    """The lifecycle of an execution."""

    PENDING = "pending"
    INITIALIZING = "initializing"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for Completed, Failed and Cancelled: states that never change again."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
ACTIVE_STATUSES = frozenset(Status) - TERMINAL_STATUSES


class FailureReason(enum.Enum):
    """Why an execution failed, for machines."""

    IMAGE_PULL = "image_pull"
    CREATE = "create"
    START = "start"
    INIT = "init"
    EXIT_CODE = "exit_code"
    OOM_KILLED = "oom_killed"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    AGENT_LOST = "agent_lost"
    AGENT_ERROR = "agent_error"


class TriggerKind(enum.Enum):
    """Where an execution's trigger came from."""

    ENDPOINT = "endpoint"
    CLI = "cli"
    SCHEDULER = "scheduler"
    INTERNAL = "internal"


@dataclass(frozen=True)
class Trigger:
    """Who or what started an execution."""

    kind: TriggerKind
    remote_address: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ImageSpec:
    """The image a job runs and when to pull it."""

    name: str
    pull_policy: PullPolicy = PullPolicy.IF_NOT_PRESENT


@dataclass(frozen=True)
class CommandSpec:
    """The process to run; empty parts fall back to the image's config."""

    entrypoint: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    workdir: str = ""


@dataclass(frozen=True)
class Resources:
    """Upper bounds enforced through the container's cgroup; None means unlimited."""

    cpu: float | None = None
    memory_bytes: int | None = None
    pids_limit: int | None = None


class InitAction(enum.Enum):
    """The seed's init actions, plus init.sleep."""

    WAIT_TCP = "init.wait_tcp"
    WAIT_HTTP = "init.wait_http"
    RUN = "init.run"
    SLEEP = "init.sleep"

    @property
    def probes_network(self) -> bool:
        """True for the waits, which probe from the job's network namespace."""
        return self in (InitAction.WAIT_TCP, InitAction.WAIT_HTTP)


class StepFailure(enum.Enum):
    """What a failed init step does to the execution."""

    FAIL = "fail"
    WARN = "warn"
    CONTINUE = "continue"


class InitFailurePolicy(enum.Enum):
    """errors.on_init_failure: what a failed init sequence does (fail, or run it again)."""

    FAIL = "fail"
    RESTART = "restart"
    BACKOFF = "backoff"


@dataclass(frozen=True)
class InitStep:
    """One step run before the job's container starts.

    `params` holds the action's `with:` settings, already validated: wait_tcp has host
    and port, wait_http has url and expect_status, run has command (an argv), sleep has
    seconds; waits may have a timeout in seconds.
    """

    id: str
    action: InitAction
    params: Mapping[str, Any] = field(default_factory=dict)
    retry: int = 0
    timeout_seconds: float | None = None
    on_failure: StepFailure = StepFailure.FAIL


@dataclass(frozen=True)
class RetryPolicy:
    """How failed attempts are retried (like a Kubernetes Job's backoffLimit and
    podFailurePolicy): up to backoff_limit retries, the delay doubling from initial_delay
    up to max_delay. An exit code in fail_exit_codes fails at once; when retry_exit_codes
    is set, only those codes are retried.
    """

    backoff_limit: int = 0
    initial_delay_seconds: float = 1.0
    max_delay_seconds: float = 60.0
    fail_exit_codes: tuple[int, ...] = ()
    retry_exit_codes: tuple[int, ...] = ()

    def retries(self, exit_code: int) -> bool:
        """True when a failed attempt with this exit code may be retried at all."""
        if exit_code in self.fail_exit_codes:
            return False
        return not self.retry_exit_codes or exit_code in self.retry_exit_codes

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        return float(min(self.max_delay_seconds, self.initial_delay_seconds * 2 ** (retry - 1)))


class MountKind(enum.Enum):
    """The seed's storage types that a job can use."""

    BIND = "bind"
    NAMED = "named"
    ANONYMOUS = "anonymous"
    TMPFS = "tmpfs"


@dataclass(frozen=True)
class Mount:
    """One storage mount of a job's container.

    `source` is the host path of a bind mount or the name of a named volume; named
    volumes live under the agent's data directory and outlive executions, anonymous
    ones live and die with the container.
    """

    kind: MountKind
    target: str
    source: str = ""
    readonly: bool = False
    size_bytes: int | None = None
    mode: int | None = None


class UserNamespace(enum.Enum):
    """Whose user ids a job's container runs with."""

    # Its own: container ids 0-65535 are an unprivileged host range of the job's.
    PRIVATE = "private"
    # The host's: container root is host root (only where the agent allows it).
    HOST = "host"


# A job's container ids 0 to ID_RANGE_SIZE - 1 map to as many host ids.
ID_RANGE_SIZE = 65536


@dataclass(frozen=True)
class IdRange:
    """Host user and group ids `start` to `start + size - 1`, seen as 0 to `size - 1` in a
    container's user namespace."""

    start: int
    size: int = ID_RANGE_SIZE


@dataclass(frozen=True)
class IdRangePool:
    """The host ids the agent gives jobs (as a line of /etc/subuid): `count` ids from
    `start`, cut into ranges of ID_RANGE_SIZE, one per job."""

    start: int = 1 << 20
    # 16384 jobs; the last id is below 2^31, which every filesystem stores.
    count: int = ID_RANGE_SIZE * 16384

    @property
    def slots(self) -> int:
        """How many ranges the pool holds."""
        return self.count // ID_RANGE_SIZE

    def range(self, slot: int) -> IdRange:
        """The range of one slot (0 to slots - 1)."""
        return IdRange(self.start + slot * ID_RANGE_SIZE)


@dataclass(frozen=True)
class HostPolicy:
    """What the agent lets a job reach on the host."""

    bind_allowlist: tuple[str, ...] = ()
    allow_host_network: bool = False
    allow_privileged: bool = False
    # Jobs with user_namespace: host (container root is host root).
    allow_host_userns: bool = False
    # Capabilities a job may add to the default set (CAP_NET_ADMIN, ...).
    allowed_capabilities: frozenset[str] = frozenset()


class ConcurrencyPolicy(enum.Enum):
    """What a cron job does when its schedule fires while a run is still active."""

    ALLOW = "allow"
    FORBID = "forbid"
    REPLACE = "replace"


@dataclass(frozen=True)
class CronPolicy:
    """How a cron job's schedule turns into executions (as a Kubernetes CronJob)."""

    time_zone: str = "UTC"
    concurrency_policy: ConcurrencyPolicy = ConcurrencyPolicy.ALLOW
    starting_deadline_seconds: float | None = None
    suspend: bool = False
    successful_history_limit: int = 3
    failed_history_limit: int = 1


class PayloadRequirement(enum.Enum):
    """Whether a trigger of a parameterized job may, must or must not carry a payload."""

    FORBIDDEN = "forbidden"
    OPTIONAL = "optional"
    REQUIRED = "required"


DEFAULT_PAYLOAD_PATH = "/run/dispatch/payload"


@dataclass(frozen=True)
class DispatchPolicy:
    """What a trigger may add to a run of the job (as a Nomad parameterized job)."""

    payload: PayloadRequirement = PayloadRequirement.FORBIDDEN
    payload_path: str = DEFAULT_PAYLOAD_PATH
    # Env names a trigger may set, and those it must set.
    env: tuple[str, ...] = ()
    required_env: tuple[str, ...] = ()
    # Whether a trigger may append args to the job's command.
    args: bool = False

    @property
    def accepts_any(self) -> bool:
        """False for a job that takes no dispatch parameters at all."""
        return self.args or bool(self.env) or self.payload is not PayloadRequirement.FORBIDDEN


@dataclass(frozen=True)
class Dispatch:
    """What one trigger added: args after the job's command, env over the job's, a payload
    file at the job's payload path."""

    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    payload: bytes = b""

    @property
    def empty(self) -> bool:
        """True when the trigger added nothing."""
        return not (self.args or self.env or self.payload)


@dataclass(frozen=True)
class TriggerRequest:
    """A trigger's idempotency key (AIP-155 request_id, may be empty) and parameters.

    A request_id is scoped to its `caller` (agent.api.identity): another caller's same
    request_id is another request."""

    request_id: str = ""
    dispatch: Dispatch = field(default_factory=Dispatch)
    caller: str = ""


@dataclass(frozen=True)
class CronState:
    """What the scheduler recorded of a cron job."""

    last_schedule_time: datetime | None = None
    last_execution_id: str = ""
    skipped: int = 0
    missed: int = 0


@dataclass(frozen=True)
class JobSpec:
    """One job: a service with rtype job or cron of a deployment document."""

    name: str
    image: ImageSpec
    deployment: str = ""
    kind: JobKind = JobKind.JOB
    command: CommandSpec = field(default_factory=CommandSpec)
    env: Mapping[str, str] = field(default_factory=dict)
    schedule: str = ""
    resources: Resources = field(default_factory=Resources)
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: float | None = None
    stop_signal: str = ""
    stop_grace_seconds: float | None = None
    init_steps: tuple[InitStep, ...] = ()
    on_init_failure: InitFailurePolicy = InitFailurePolicy.FAIL
    max_concurrent: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_log_bytes: int | None = None
    storage: tuple[Mount, ...] = ()
    host_network: bool = False
    # Every capability, no seccomp, no masked paths (only where the agent allows it).
    privileged: bool = False
    # Capabilities added to the default set (only those the agent allows).
    capabilities: tuple[str, ...] = ()
    user_namespace: UserNamespace = UserNamespace.PRIVATE
    cron: CronPolicy = field(default_factory=CronPolicy)
    dispatch: DispatchPolicy = field(default_factory=DispatchPolicy)

    @property
    def own_user_namespace(self) -> bool:
        """True when the job's container gets a user namespace (and the job an id range):
        unless it asks for the host's, or is privileged."""
        return self.user_namespace is UserNamespace.PRIVATE and not self.privileged

    def with_dispatch(self, dispatch: Dispatch) -> JobSpec:
        """The spec of one run: the trigger's args after the command, its env over the job's."""
        if dispatch.empty:
            return self
        command = replace(self.command, args=(*self.command.args, *dispatch.args))
        return replace(self, command=command, env={**self.env, **dispatch.env})


@dataclass(frozen=True)
class Job:
    """A registered job."""

    spec: JobSpec
    created_at: datetime
    updated_at: datetime
    spec_yaml: str = ""

    @property
    def name(self) -> str:
        """The job's name."""
        return self.spec.name


@dataclass(frozen=True)
class Execution:
    """One run of a job, as recorded in the store."""

    id: str
    job_name: str
    status: Status
    trigger: Trigger
    container_id: str
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    failure_reason: FailureReason | None = None
    message: str = ""
    image: str = ""
    attempt: int = 1
    # Derived, never stored: 1 for the next execution to start, 0 when not waiting.
    queue_position: int = 0

    @property
    def duration(self) -> timedelta | None:
        """Run time: finish minus start (or minus creation when it never started)."""
        if self.finished_at is None:
            return None
        return self.finished_at - (self.started_at or self.created_at)


class EventKind(enum.Enum):
    """What an event records: the first seven are of an execution, the rest of a job."""

    TRANSITION = "transition"
    QUEUED = "queued"
    ATTEMPT_FAILED = "attempt_failed"
    ATTEMPT_STARTED = "attempt_started"
    INIT_STEP_STARTED = "init_step_started"
    INIT_STEP_SUCCEEDED = "init_step_succeeded"
    INIT_STEP_FAILED = "init_step_failed"
    JOB_REGISTERED = "job_registered"
    JOB_UPDATED = "job_updated"
    JOB_UNREGISTERED = "job_unregistered"
    JOB_SUSPENDED = "job_suspended"
    JOB_RESUMED = "job_resumed"
    SCHEDULE_SKIPPED = "schedule_skipped"
    SCHEDULE_MISSED = "schedule_missed"


@dataclass(frozen=True)
class Attempt:
    """One run of an execution's container; retries make more than one."""

    number: int
    container_id: str
    started_at: datetime
    finished_at: datetime | None = None
    exit_code: int | None = None
    failure_reason: FailureReason | None = None
    message: str = ""


@dataclass(frozen=True)
class ExecutionDetails:
    """An execution with its attempts (first to last) and the request that triggered it:
    what GetExecution answers."""

    execution: Execution
    attempts: tuple[Attempt, ...]
    request: TriggerRequest


@dataclass(frozen=True)
class ExecutionEvent:
    """One recorded event of an execution, with its node-wide sequence number.

    `execution` is the execution as it was when the event was recorded; for an init step
    event, `step_id` names the step and `message` says what happened.
    """

    sequence: int
    time: datetime
    execution: Execution
    kind: EventKind = EventKind.TRANSITION
    step_id: str = ""
    message: str = ""


@dataclass(frozen=True)
class JobNote:
    """What a job event will say, before the store gives it a sequence."""

    kind: EventKind
    message: str = ""
    schedule_time: datetime | None = None


@dataclass(frozen=True)
class JobEvent:
    """One recorded event of a job (registration, suspension, a skipped or missed run).

    `schedule_time` is the schedule time a SCHEDULE_SKIPPED or SCHEDULE_MISSED event is
    about (the latest one, when several were missed).
    """

    sequence: int
    time: datetime
    job_name: str
    kind: EventKind
    message: str = ""
    schedule_time: datetime | None = None


NodeEvent = ExecutionEvent | JobEvent


def event_job_name(event: NodeEvent) -> str:
    """The job an event belongs to."""
    return event.job_name if isinstance(event, JobEvent) else event.execution.job_name


@dataclass(frozen=True)
class Bookmark:
    """A quiet moment on a node watch: every event up to `sequence` was sent."""

    sequence: int


@dataclass(frozen=True)
class ExecutionFilter:
    """Which executions a list wants; empty fields match everything."""

    job_name: str = ""
    statuses: frozenset[Status] = frozenset()
    triggers: frozenset[TriggerKind] = frozenset()
    created_after: datetime | None = None
    created_before: datetime | None = None


class LogStream(enum.Enum):
    """The output stream of a log line."""

    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True)
class LogLine:
    """One line of a container's output, as the monitor recorded it."""

    time: datetime
    stream: LogStream
    message: str
    partial: bool = False
    truncated: bool = False


NANOS_PER_SECOND = 1_000_000_000


@dataclass
class LogBatch:
    """Consecutive lines of one attempt's output, column by column: the i-th line is
    (messages[i], times[i], streams[i]), a fragment when i is in `partial` (see LogLine)."""

    messages: list[str] = field(default_factory=list)
    # When the monitor read each line, in nanoseconds since the Unix epoch.
    times: list[int] = field(default_factory=list)
    streams: list[LogStream] = field(default_factory=list)
    partial: list[int] = field(default_factory=list)
    # Older output was dropped before the first line.
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.messages)

    def extend(self, other: LogBatch) -> None:
        """Appends `other`'s lines."""
        base = len(self.messages)
        self.messages.extend(other.messages)
        self.times.extend(other.times)
        self.streams.extend(other.streams)
        self.partial.extend(base + index for index in other.partial)

    def slice(self, start: int, stop: int) -> LogBatch:
        """Lines start..stop-1 (negative indexes count from the end, as in a list's)."""
        start, stop, _ = slice(start, stop).indices(len(self.messages))
        return LogBatch(
            self.messages[start:stop],
            self.times[start:stop],
            self.streams[start:stop],
            [index - start for index in self.partial if start <= index < stop],
        )

    def pieces(self, max_chars: int) -> Iterator[LogBatch]:
        """The batch cut into batches of about `max_chars` characters of text each."""
        start, size = 0, 0
        for index, message in enumerate(self.messages):
            size += len(message) + 1
            if size >= max_chars:
                yield self.slice(start, index + 1)
                start, size = index + 1, 0
        if start < len(self.messages):
            yield self.slice(start, len(self.messages))

    def lines(self) -> Iterator[LogLine]:
        """The lines, one LogLine each."""
        fragments = set(self.partial)
        for index, message in enumerate(self.messages):
            seconds, nanos = divmod(self.times[index], NANOS_PER_SECOND)
            time = datetime.fromtimestamp(seconds, UTC).replace(microsecond=nanos // 1000)
            yield LogLine(
                time,
                self.streams[index],
                message,
                partial=index in fragments,
                truncated=self.truncated and index == 0,
            )
