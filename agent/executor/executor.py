"""The executor: the node's executions, from trigger to terminal state.

It knows nothing of gRPC, subprocesses or SQL: it admits executions under the
concurrency limits, gives each an ExecutionRun that drives the ContainerRuntime, and
answers queries, watches and log reads from the Store and the event bus.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent import faults
from agent.diskspace import DiskSpace, format_bytes, usage
from agent.dispatch import check_dispatch, fingerprint
from agent.domain import (
    ACTIVE_STATUSES,
    Attempt,
    Bookmark,
    CronState,
    Dispatch,
    EventKind,
    Execution,
    ExecutionDetails,
    ExecutionEvent,
    ExecutionFilter,
    FailureReason,
    HostPolicy,
    IdRange,
    IdRangePool,
    Job,
    JobEvent,
    JobKind,
    JobNote,
    JobSpec,
    LogBatch,
    LogLine,
    NodeEvent,
    Status,
    Trigger,
    TriggerKind,
    TriggerRequest,
    event_job_name,
)
from agent.errors import (
    AgentError,
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    HostPolicyRefused,
    InvalidSpec,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    StoreUnwritable,
    Unavailable,
)
from agent.executor.admission import Admission
from agent.executor.events import QUIET, EventBus
from agent.executor.lifecycle import ExecutionRun, container_id_of, log_file_of, now
from agent.executor.logs import LogChunk, LogQuery, read_log_batches, read_log_chunks
from agent.executor.ports import ContainerRuntime
from agent.executor.recorder import Recorder
from agent.executor.retention import Retention, RetentionPolicy
from agent.executor.stored_jobs import stored_spec_problem
from agent.privileges import check_host_policy
from agent.runtime.errors import RuntimeLayerError
from agent.runtime.images import PruneResult
from agent.store import COMMIT_CHECKPOINT_PAGES, Store

log = logging.getLogger(__name__)
# A node watcher this many events behind is cut off (RESOURCE_EXHAUSTED) and resumes.
NODE_WATCH_CAPACITY = 10_000
WATCH_PAGE = 1000
STOPPING = "the agent is stopping"
DISK_CHECK_SECONDS = 1.0
# How long a commit may wait to reach the disk (sync_store_forever).
STORE_SYNC_SECONDS = 1.0
# A running execution that takes less of a full disk than this is never stopped for it.
EVICT_MIN_BYTES = 1024**2
# The largest row id SQLite stores (a signed 64-bit integer).
MAX_ROW_ID = 2**63 - 1


@dataclass(frozen=True)
class AttemptLog:
    """Where an attempt's log is, and whether the attempt is over."""

    execution_id: str
    number: int
    path: Path
    # Set once the attempt is over: the monitor has written the whole file.
    ended: asyncio.Event
    # The size cap: output older than the newest max_bytes is not shown.
    max_bytes: int


class Executor:
    """Owns every execution of the node from trigger to terminal state."""

    def __init__(
        self,
        store: Store,
        runtime: ContainerRuntime,
        log_dir: Path,
        *,
        stop_grace: float = 10.0,
        node_limit: int = 64,
        max_log_bytes: int = 1024**2,
        retention: RetentionPolicy | None = None,
        host_policy: HostPolicy | None = None,
        id_ranges: IdRangePool | None = None,
        disk: DiskSpace | None = None,
        max_pending: int = 1000,
        max_pending_per_job: int = 100,
    ) -> None:
        """`disk` (the data directory's free space) refuses triggers while it is low and
        stops the biggest writer when it is full; None leaves the disk unwatched."""
        self._store = store
        # The store's commit count at its last sync (sync_store_forever): none yet.
        self._synced_commits = -1
        # When sync_store_forever last found every commit durable (time.time(); 0: never).
        self.store_durable_at = 0.0
        # Whether the store's last checkpoint failed (only the first of a run is logged).
        self._checkpoint_failing = False
        # The host ids that jobs' user namespaces map to, one range per job.
        self.id_ranges = id_ranges or IdRangePool()
        self._runtime = runtime
        self._log_dir = log_dir
        self._stop_grace = stop_grace
        self.host_policy = host_policy or HostPolicy()
        self._max_log_bytes = max_log_bytes
        self._bus = EventBus()
        self._disk = disk
        self._recorder = Recorder(store, self._bus, disk.release_reserve if disk else None)
        self._runs: dict[str, ExecutionRun] = {}
        # Removals of containers that runs dying of an agent error left (held until done).
        self._cleanups: set[asyncio.Task[None]] = set()
        self._closing = False
        self._node_limit = node_limit
        self._admission = Admission(node_limit)
        self._max_pending = max_pending
        self._max_pending_per_job = max_pending_per_job
        self._waiting: dict[str, tuple[Execution, JobSpec, Dispatch]] = {}
        self.retention = Retention(store, log_dir, retention or RetentionPolicy())
        # Jobs whose stored spec today's validator refuses: name -> why (until replaced).
        self._invalid: dict[str, str] = {}

    # Jobs

    def register_jobs(
        self, specs: Sequence[JobSpec], spec_yaml: str | Mapping[str, str], replace_existing: bool
    ) -> list[Job]:
        """Registers jobs; an existing job with another spec needs `replace_existing`.
        `spec_yaml` is each job's own document by job name (agent.spec.service_documents),
        or one text for all of them.

        Either every job is registered or none is.
        """
        at = now()
        changes: list[tuple[Job, JobNote | None]] = []
        for spec in specs:
            try:
                existing = self._find_job(spec.name)
            except DataLoss:
                if not replace_existing:
                    raise AlreadyExists(
                        f"job {spec.name!r} exists but its stored spec cannot be read (use replace)"
                    ) from None
                existing = None
            if existing is not None and existing.spec != spec and not replace_existing:
                raise AlreadyExists(f"job {spec.name!r} exists with another spec (use replace)")
            created = existing.created_at if existing is not None else at
            updated = at if existing is None or existing.spec != spec else existing.updated_at
            text = spec_yaml if isinstance(spec_yaml, str) else spec_yaml.get(spec.name, "")
            job = Job(spec=spec, created_at=created, updated_at=updated, spec_yaml=text)
            note = None
            if existing is None:
                note = JobNote(EventKind.JOB_REGISTERED)
            elif existing.spec != spec:
                note = JobNote(EventKind.JOB_UPDATED, "the spec was replaced")
            changes.append((job, note))
        needing = [
            spec.name
            for spec in specs
            if spec.own_user_namespace and not self._store.has_user_range(spec.name)
        ]
        if len(needing) > self._store.free_user_range_slots(self.id_ranges.slots):
            raise ResourceExhausted(
                f"no user id range is left for {', '.join(needing)}: each registered job "
                f"holds one of {self.id_ranges.slots} (--userns-range)"
            )
        for event in self._store.put_jobs(changes, needing, self.id_ranges.slots):
            self._publish(event)
        for job, _ in changes:
            self._invalid.pop(job.name, None)
        return [job for job, _ in changes]

    def id_range(self, spec: JobSpec) -> IdRange | None:
        """The host ids the job's container root maps to; None when it runs in the host's
        user namespace. Raises ResourceExhausted when the job holds no range and none is
        free (a job registered before ranges were given out)."""
        if not spec.own_user_namespace:
            return None
        return self.id_ranges.range(self._store.user_range_slot(spec.name, self.id_ranges.slots))

    def get_job(self, name: str) -> Job:
        """Returns a job; raises NotFound."""
        return self._store.get_job(name)

    def list_jobs(self) -> list[Job]:
        """Returns every job, by name."""
        return self._store.list_jobs()

    def page_jobs(self, page_size: int, page_token: str) -> tuple[list[Job], str]:
        """A page of jobs by name, and the token of the next page ("" at the end).

        The token holds the last name shown, so jobs registered meanwhile never shift it.
        """
        after = _decode_token("j", page_token) if page_token else ""
        page = self._store.list_jobs(after, page_size + 1)
        token = _encode_token("j", page[page_size - 1].name) if len(page) > page_size else ""
        return page[:page_size], token

    def unregister_job(self, name: str) -> None:
        """Removes a job that has no active execution (also one whose row is unreadable)."""
        with contextlib.suppress(DataLoss):
            self._store.get_job(name)
        if self._store.list_executions(job_name=name, statuses=ACTIVE_STATUSES):
            raise FailedPrecondition(f"job {name!r} has active executions; cancel them first")
        self._publish(self._store.delete_job(name))
        self._invalid.pop(name, None)

    def set_suspended(self, name: str, suspended: bool) -> Job:
        """Suspends or resumes a cron job's schedule; resuming skips the times it missed."""
        job = self._store.get_job(name)
        if job.spec.kind is not JobKind.CRON:
            raise FailedPrecondition(f"job {name!r} has no schedule to suspend or resume")
        if not suspended:
            self._refuse_if_invalid(name)
        if job.spec.cron.suspend == suspended:
            return job
        spec = replace(job.spec, cron=replace(job.spec.cron, suspend=suspended))
        updated = replace(job, spec=spec, updated_at=now())
        if suspended:
            self._publish(self._store.put_job(updated, JobNote(EventKind.JOB_SUSPENDED)))
        else:
            state = replace(self._store.get_cron_state(name), last_schedule_time=now())
            note = JobNote(EventKind.JOB_RESUMED, "times missed while suspended are skipped")
            self._publish(self._store.put_job(updated, note, state))
        return updated

    def suspend_invalid_jobs(self) -> None:
        """Suspends each stored job that today's validator refuses (written by an older
        version, or by hand), at every start until it is registered again or removed.

        The reason is logged and recorded as a JOB_SUSPENDED event; a cron job is stored
        suspended (GetJob shows it, without a next run), and triggers and ResumeJob of any
        such job answer FAILED_PRECONDITION with the reason. Reading it still works.
        """
        for job in self._store.list_jobs():
            problem = stored_spec_problem(job.spec)
            if problem is None:
                continue
            self._invalid[job.name] = problem
            message = (
                f"suspended at start: its stored spec no longer validates ({problem}); "
                "register it again"
            )
            log.error("job %s %s", job.name, message)
            if job.spec.kind is JobKind.CRON and not job.spec.cron.suspend:
                spec = replace(job.spec, cron=replace(job.spec.cron, suspend=True))
                job = replace(job, spec=spec, updated_at=now())
            try:
                self._publish(self._store.put_job(job, JobNote(EventKind.JOB_SUSPENDED, message)))
            except Exception:  # it stays refused; the agent starts all the same
                log.exception("job %s: recording its suspension failed", job.name)

    def _refuse_if_invalid(self, name: str) -> None:
        problem = self._invalid.get(name)
        if problem is not None:
            raise FailedPrecondition(
                f"job {name!r} is suspended: its stored spec no longer validates ({problem}); "
                "register it again"
            )

    def record_cron_state(self, name: str, state: CronState, note: JobNote | None = None) -> None:
        """Stores what the scheduler did for a cron job, with a job event when `note` says one."""
        self._publish(self._store.put_cron_state(name, state, note))

    def _publish(self, event: JobEvent | None) -> None:
        if event is not None:
            self._bus.publish(event)

    def add_event_listener(self, listener: Callable[[NodeEvent], None]) -> None:
        """Calls `listener` with every recorded event (metrics); it must not block."""
        self._bus.add_listener(listener)

    def running_count(self) -> int:
        """Executions whose container runs now."""
        return self._store.count_executions(Status.RUNNING)

    def load(self) -> tuple[int, int, int, int]:
        """Active executions, queued ones, the node limit, and the newest event sequence."""
        return (
            self._admission.active,
            self._admission.waiting,
            self._node_limit,
            self._store.last_sequence(),
        )

    def cron_state(self, name: str) -> CronState:
        """What the scheduler recorded of a cron job."""
        return self._store.get_cron_state(name)

    def _find_job(self, name: str) -> Job | None:
        try:
            return self._store.get_job(name)
        except NotFound:
            return None

    # Executions

    async def trigger(
        self,
        job_name: str,
        trigger: Trigger,
        request: TriggerRequest | None = None,
        cron_state: CronState | None = None,
        replacing: Sequence[str] = (),
    ) -> Execution:
        """Creates a Pending execution of the job; it starts as soon as a slot allows.

        A request_id seen before returns the execution it created (the same request) or
        raises InvalidSpec (another request); parameters must be what the job allows.
        `cron_state` (the scheduler's) is recorded with the execution, which it names as
        the last one. The executions named in `replacing` (concurrency_policy replace) are
        cancelled once it is recorded, and before it may start: nothing is stopped for a
        run that cannot be recorded, and the two never run side by side.
        """
        if self._closing:
            raise Unavailable("the agent is shutting down")
        request = request or TriggerRequest()
        digest = fingerprint(job_name, request.dispatch)
        if request.request_id:
            seen = self._store.find_request(request.request_id, request.caller)
            if seen is not None:
                if seen[1] != digest:
                    raise InvalidSpec(
                        "request_id",
                        "was already used for another request (another job or other parameters)",
                    )
                return self.get_execution(seen[0])
        job = self._store.get_job(job_name)
        self._refuse_if_invalid(job.name)
        check_dispatch(job.spec.dispatch, request.dispatch)
        if self._disk is not None:
            self._disk.check()
        refusal = self._policy_refusal(job.spec)
        # A caller hears the refusal; a scheduled run is recorded as a failed execution.
        if refusal is not None and trigger.kind is not TriggerKind.SCHEDULER:
            raise refusal
        if refusal is None:
            self._check_pending(job.name, leaving=sum(i in self._waiting for i in replacing))
        execution_id = uuid.uuid4().hex
        execution = Execution(
            id=execution_id,
            job_name=job.name,
            status=Status.PENDING,
            trigger=trigger,
            container_id=container_id_of(execution_id, 1),
            created_at=now(),
            image=job.spec.image.name,
        )
        if cron_state is not None:
            cron_state = replace(cron_state, last_execution_id=execution_id)
        self._bus.publish(self._store.insert_execution(execution, request, digest, cron_state))
        log.info(
            "job %s: pending (trigger %s)",
            job.name,
            trigger.kind.value,
            extra={"execution_id": execution.id},
        )
        if refusal is not None:
            self._refuse(execution, refusal)
            return self.get_execution(execution.id)
        if replacing:
            await self._cancel_replaced(replacing, job.name)
            # Cancelled itself meanwhile (CancelExecution), it never starts.
            if self._recorder.latest(self._store.get_execution(execution_id)).status.terminal:
                return self.get_execution(execution_id)
        self._enqueue(execution, job.spec, request.dispatch)
        position = self._admission.position(execution.id)
        if position:
            limit = "the node's" if self._admission.active >= self._node_limit else "the job's"
            message = f"waiting for a slot: {limit} concurrency limit is reached"
            self._recorder.event(execution, EventKind.QUEUED, "", message)
            return replace(execution, queue_position=position)
        return execution

    async def _cancel_replaced(self, execution_ids: Sequence[str], job_name: str) -> None:
        """Cancels each execution a new one replaces; one that cannot be is logged, and
        the others are cancelled all the same."""
        for execution_id in execution_ids:
            try:
                await self.cancel(execution_id)
            except AgentError as error:  # it ended meanwhile, say
                log.info("job %s: replacing %s: %s", job_name, execution_id, error)
            except Exception as error:
                log.warning("job %s: replacing %s: %s", job_name, execution_id, error)

    def _check_pending(self, job_name: str, leaving: int = 0) -> None:
        """ResourceExhausted, naming the limit, when the queue has no room for one more
        (once `leaving` of the job's waiting executions have left it)."""
        if self._admission.waiting - leaving >= self._max_pending:
            raise ResourceExhausted(
                f"the node has {self._max_pending} executions waiting in Pending, its "
                "limit (--max-pending); trigger again once some have started"
            )
        if self._admission.waiting_for(job_name) - leaving >= self._max_pending_per_job:
            raise ResourceExhausted(
                f"job {job_name!r} has {self._max_pending_per_job} executions waiting in "
                "Pending, its limit (--max-pending-per-job); trigger again once some have "
                "started"
            )

    def get_execution(self, execution_id: str) -> Execution:
        """Returns an execution (with its queue position while it waits); raises NotFound."""
        return self._with_position(self._store.get_execution(execution_id))

    def list_executions(self, job_name: str = "") -> list[Execution]:
        """Returns executions newest first."""
        return [self._with_position(e) for e in self._store.list_executions(job_name=job_name)]

    def page_executions(
        self, wanted: ExecutionFilter, page_size: int, page_token: str
    ) -> tuple[list[Execution], str]:
        """A page of executions newest first, and the token of the next page ("" at the end)."""
        after = _execution_cursor(page_token) if page_token else None
        page, cursor = self._store.page_executions(wanted, page_size, after)
        token = "" if cursor is None else _encode_token("e", str(cursor))
        return [self._with_position(execution) for execution in page], token

    def trigger_request(self, execution_id: str) -> TriggerRequest:
        """The request_id and dispatch parameters of an execution's trigger."""
        return self._store.get_request(execution_id)

    def list_attempts(self, execution_id: str) -> list[Attempt]:
        """Returns the execution's attempts, first to last; raises NotFound."""
        self._store.get_execution(execution_id)
        return self._store.list_attempts(execution_id)

    def describe_execution(self, execution_id: str) -> ExecutionDetails:
        """The execution (as get_execution gives it), its attempts first to last, and its
        trigger's request_id and dispatch parameters; raises NotFound."""
        details = self._store.describe_execution(execution_id)
        execution = self._with_position(details.execution)
        return details if execution is details.execution else replace(details, execution=execution)

    async def cancel(
        self, execution_id: str, grace_seconds: float | None = None, signal: str | None = None
    ) -> Execution:
        """Stops an active execution and returns it once it is terminal; the grace period
        and stop signal of the request win over the job's."""
        execution = self._recorder.latest(self._store.get_execution(execution_id))
        if execution.status.terminal:
            raise FailedPrecondition(
                f"execution {execution_id} already finished ({execution.status.value})"
            )
        if self._admission.withdraw(execution_id):
            del self._waiting[execution_id]
            return self._recorder.transition(
                execution, Status.CANCELLED, message="cancelled on request", finished_at=now()
            )
        run = self._runs.get(execution_id)
        if run is not None and run.task is not None:
            await run.cancel(grace_seconds, signal)
            await asyncio.wait([run.task])
        execution = self._recorder.latest(self._store.get_execution(execution_id))
        if not execution.status.terminal:
            # The task was cancelled before its first step, so it could record nothing.
            await self._runtime.remove(execution.container_id)
            execution = self._recorder.transition(
                execution, Status.CANCELLED, message="cancelled on request", finished_at=now()
            )
        return execution

    async def watch(self, execution_id: str) -> AsyncIterator[ExecutionEvent]:
        """Yields the execution's latest event, then each later one; ends after the terminal one."""
        queue = self._bus.subscribe(execution_id)
        try:
            event = self._store.last_event(execution_id)
            yield event
            sequence = event.sequence
            while not event.execution.status.terminal:
                item = await queue.get()
                if item is None:
                    raise Unavailable(STOPPING)
                event = item
                if event.sequence > sequence:
                    sequence = event.sequence
                    yield event
        finally:
            self._bus.unsubscribe(execution_id, queue)

    async def watch_events(
        self,
        since: int,
        job_name: str = "",
        kinds: frozenset[EventKind] = frozenset(),
        bookmark_seconds: float = 30.0,
    ) -> AsyncIterator[NodeEvent | Bookmark]:
        """Yields every event of the node after `since` (optionally of one job or some kinds),
        then each new one, once and in order, with a Bookmark after each quiet interval.

        `since` 0 starts at the oldest event still held. Raises OutOfRange when retention
        already removed events after a non-zero `since` or `since` is newer than any event,
        and ResourceExhausted when the watcher falls too far behind; it resumes from the
        last sequence it saw.
        """
        if since and since < self._store.compacted_through():
            raise OutOfRange(f"events up to {self._store.compacted_through()} are gone; re-list")
        newest = self._store.last_sequence()
        if since > newest:
            # A sequence this store never gave out: it was replaced, or the caller is confused.
            raise OutOfRange(f"since_sequence {since} is beyond the newest event {newest}; re-list")

        def wanted(event: NodeEvent) -> bool:
            return (not job_name or event_job_name(event) == job_name) and (
                not kinds or event.kind in kinds
            )

        subscription = self._bus.subscribe_node(NODE_WATCH_CAPACITY, bookmark_seconds)
        try:
            last = since
            while page := self._store.node_events_after(last, WATCH_PAGE):
                for event in page:
                    last = event.sequence
                    if wanted(event):
                        yield event
            while True:
                item = await subscription.next()
                if item is QUIET:
                    yield Bookmark(last)
                    continue
                if item is None and self._bus.stopped:
                    raise Unavailable(f"{STOPPING}; resume after {last}")
                if item is None:
                    raise ResourceExhausted(f"the watcher fell behind; resume after {last}")
                if item.sequence > last:
                    last = item.sequence
                    if wanted(item):
                        yield item
        finally:
            self._bus.unsubscribe_node(subscription)

    async def stream_logs(
        self, execution_id: str, query: LogQuery, attempt: int = 0
    ) -> AsyncIterator[LogLine]:
        """Yields the output of one attempt (the latest when 0); with follow, until it ends."""
        async for batch in self.stream_log_batches(execution_id, query, attempt):
            for line in batch.lines():
                yield line

    async def stream_log_batches(
        self, execution_id: str, query: LogQuery, attempt: int = 0
    ) -> AsyncIterator[LogBatch]:
        """stream_logs, many lines at a time."""
        async with self._attempt_log(execution_id, attempt) as log_:
            query = replace(query, max_bytes=log_.max_bytes)
            async for batch in read_log_batches(log_.path, query, log_.ended):
                yield batch
            self._raise_if_stopping(log_, query.follow)

    async def download_logs(
        self, execution_id: str, offset: int, follow: bool, attempt: int = 0
    ) -> AsyncIterator[LogChunk]:
        """Yields one attempt's log file (the latest's when 0) from `offset` in chunks of
        whole records; with follow, until the attempt ends. OutOfRange past the end."""
        async with self._attempt_log(execution_id, attempt) as log_:
            async for chunk in read_log_chunks(
                log_.path, offset, follow, log_.ended, log_.max_bytes
            ):
                yield chunk
            self._raise_if_stopping(log_, follow)

    @contextlib.asynccontextmanager
    async def _attempt_log(self, execution_id: str, attempt: int) -> AsyncIterator[AttemptLog]:
        """One attempt's log file, and an event set once the attempt is over."""
        queue = self._bus.subscribe(execution_id)
        try:
            execution = self._store.get_execution(execution_id)
            number = attempt or execution.attempt
            if number > execution.attempt:
                raise NotFound(f"execution {execution_id} has no attempt {number}")
            job = self._find_job(execution.job_name)
            ended = asyncio.Event()
            if execution.status.terminal or execution.attempt > number:
                ended.set()

            async def watch_end() -> None:
                while not ended.is_set():
                    event = await queue.get()
                    if event is None:
                        ended.set()
                        return
                    attempt_failed = event.kind is EventKind.ATTEMPT_FAILED
                    if event.execution.status.terminal or (
                        attempt_failed and event.execution.attempt == number
                    ):
                        ended.set()

            watcher = asyncio.create_task(watch_end())
            try:
                yield AttemptLog(
                    execution_id,
                    number,
                    log_file_of(self._log_dir, execution_id, number),
                    ended,
                    self._log_cap(job.spec if job else None),
                )
            finally:
                watcher.cancel()
        finally:
            self._bus.unsubscribe(execution_id, queue)

    def _raise_if_stopping(self, log_: AttemptLog, follow: bool) -> None:
        """A followed log that ended because the agent is stopping, not the attempt."""
        if self._bus.stopped and follow and not self._ended(log_.execution_id, log_.number):
            raise Unavailable(STOPPING)

    def _ended(self, execution_id: str, number: int) -> bool:
        """True once the attempt is over (the execution ended or moved to a later attempt)."""
        execution = self._store.get_execution(execution_id)
        return execution.status.terminal or execution.attempt > number

    # Lifecycle

    async def start(self) -> None:
        """Picks up what the store says was active when the agent last stopped, and removes
        containers that no active execution owns (left by a crash after the outcome was
        recorded, or init containers of a run that was interrupted). Stored jobs that today's
        validator refuses are suspended first."""
        self.suspend_invalid_jobs()
        active = self._store.list_executions(statuses=ACTIVE_STATUSES)
        # The next attempt's container too: a crash before its start was recorded.
        owned = {execution.container_id for execution in active} | {
            container_id_of(execution.id, execution.attempt + 1) for execution in active
        }
        for container_id in self._runtime.containers():
            if container_id not in owned:
                log.info("removing container %s: no active execution owns it", container_id)
                try:
                    await self._runtime.remove(container_id)
                    await self._runtime.forget(container_id)
                except RuntimeLayerError as error:
                    log.warning("container %s stays for the next start: %s", container_id, error)
        for execution in reversed(active):
            try:
                await self._recover(execution)
            except Exception as error:
                # One execution that cannot be recovered ends; the others and the agent go on.
                log.exception(
                    "execution %s could not be recovered",
                    execution.id,
                    extra={"execution_id": execution.id},
                )
                self._admission.release(execution.id)
                self._fail_unfinished(execution.id, error)
                # Its process must not run on untracked: nor the next attempt's, if that
                # one started while the agent was down (the sweep above counts both).
                attempts = {
                    execution.container_id,
                    container_id_of(execution.id, execution.attempt + 1),
                }
                for container_id in attempts & set(self._runtime.containers()):
                    await self._remove_left(container_id)
        self._admit()

    def begin_stop(self) -> None:
        """Refuses new triggers (UNAVAILABLE) and ends every watch and followed log with
        UNAVAILABLE; running executions go on until close()."""
        self._closing = True
        self._bus.stop()

    async def close(self) -> None:
        """Stops accepting triggers and lets go of running containers (they keep running)."""
        self.begin_stop()
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        for run in self._runs.values():
            # A run that only removes its finished container is let finish (it is quick);
            # the others leave their containers running for the next start to re-adopt.
            if run.task is not None and not run.removing:
                run.task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def prune_images(self, budget_bytes: int | None = None) -> PruneResult:
        """Removes images that no registered job and no active execution uses.

        Containers of finished executions that are still being removed are waited for
        (they are quick): their image stays mounted until then, and is prunable after.
        """
        removing = [run.task for run in self._runs.values() if run.removing and run.task]
        if removing:
            await asyncio.wait(removing)  # not gather: a cancelled prune must not cancel them
        in_use = {job.spec.image.name for job in self._store.list_jobs()}
        in_use.update(run.spec.image.name for run in self._runs.values())
        in_use.update(spec.image.name for _, spec, _ in self._waiting.values())
        return await self._runtime.prune_images(in_use, budget_bytes)

    async def retain_forever(self) -> None:
        """Retention, at once and then every interval, until cancelled (run it supervised:
        an error ends it)."""
        while True:
            faults.hit("retention")
            try:
                await self.retention.prune()
            except StoreUnwritable as error:
                log.warning("retention skipped a pass: %s", error)
            await asyncio.sleep(self.retention.policy.interval_seconds)

    async def collect_images_forever(self) -> None:
        """Keeps the image store within the retention policy's image budget (run it only
        with one), at once and then every interval, until cancelled (run it supervised: an
        unexpected error ends it)."""
        policy = self.retention.policy
        while True:
            faults.hit("image-gc")
            try:
                await self.prune_images(policy.image_budget_bytes)
            except RuntimeLayerError as error:
                log.warning("image budget: %s", error)
            await asyncio.sleep(policy.interval_seconds)

    async def sync_store_forever(self) -> None:
        """Every STORE_SYNC_SECONDS, until cancelled (run it supervised: an error ends it):
        checkpoints the store's log and makes what the store committed since the last pass
        durable, in worker threads, and sets store_durable_at.

        Commits do not wait for the disk, so that no transition stops the event loop for
        it; this bounds what a power loss can take back to about that long (an execution
        whose end is taken back is found lost at the next start). The first pass syncs
        what the start wrote; a pass that fails is tried again by the next one. A failed
        checkpoint loses nothing and ends nothing: the log grows until one succeeds."""
        while True:
            faults.hit("store-sync")
            checked_at = time.time()
            committed = self._store.commits
            if committed != self._synced_commits:
                # First, since starting the log again writes a frame that the sync then
                # takes along: a pass leaves nothing of the store's unwritten.
                await self._checkpoint_store()
                try:
                    await asyncio.to_thread(self._store.sync_to_disk)
                except OSError as error:
                    # The kernel reports a writeback error once: a later sync may succeed
                    # without the lost pages.
                    log.error(
                        "the store's records could not be made durable (%s): until a pass "
                        "succeeds, a power loss may take back the last seconds of records",
                        error,
                    )
                    raise
                self._synced_commits = committed
            self.store_durable_at = checked_at
            await asyncio.sleep(STORE_SYNC_SECONDS)

    async def _checkpoint_store(self) -> None:
        """Checkpoints the store's log in a worker thread; says so when checkpoints start
        failing and when they work again, not at every pass."""
        try:
            await asyncio.to_thread(self._store.checkpoint)
        except OSError as error:
            if not self._checkpoint_failing:
                log.warning(
                    "%s: the store's log grows until a checkpoint succeeds (past %d pages, "
                    "each commit tries one itself)",
                    error,
                    COMMIT_CHECKPOINT_PAGES,
                )
            self._checkpoint_failing = True
            return
        if self._checkpoint_failing:
            log.info("the store's log is checkpointed again")
        self._checkpoint_failing = False

    async def watch_disk_forever(self) -> None:
        """Every second, until cancelled (run it supervised: an error ends it): when the
        data disk is full, stops the biggest writer; while it has room, keeps the reserve
        file made; while the store is stalled, tries a write; once it is not, starts what
        the queue holds that a slot allows; writes the ends kept in memory. Returns at once
        without a disk to watch.

        The reserve is released only when a write of the agent's own fails (the recorder):
        released earlier, a writer that still runs would take it first.
        """
        disk = self._disk
        if disk is None:
            return
        while True:
            if disk.full():
                await self._evict_biggest(disk)
            elif not disk.low():
                await asyncio.to_thread(disk.make_reserve)
            if self._store.stalled:
                self._store.try_write()
            # Whichever write ended a stall, the queue it held starts here.
            if self._admission.waiting:
                self._admit()
            if self._recorder.unwritten:
                for execution in self._recorder.flush():
                    # The exit record a run kept while its end was unwritten (ExecutionRun).
                    await self._runtime.forget(execution.container_id)
            await asyncio.sleep(DISK_CHECK_SECONDS)

    async def _evict_biggest(self, disk: DiskSpace) -> None:
        """Stops the running execution that takes the most of the data disk (its log,
        writable layer and anonymous volumes), as a kubelet evicts under disk pressure."""
        runs = [run for run in self._runs.values() if run.running and not run.evicted]
        if not runs:
            return

        def measure(run: ExecutionRun) -> int:
            execution = run.execution
            return usage(self._log_dir / execution.id) + self._runtime.disk_usage(
                execution.container_id
            )

        sizes = await asyncio.to_thread(lambda: [measure(run) for run in runs])
        size, run = max(zip(sizes, runs, strict=True), key=lambda pair: pair[0])
        if size < EVICT_MIN_BYTES:
            return
        why = (
            f"stopped by the agent: {disk.describe()}; this execution took the most of it "
            f"({format_bytes(size)})"
        )
        log.warning("%s", why, extra={"execution_id": run.execution.id})
        try:
            await run.evict(why)
        except Exception:
            # The next pass chooses it again (it still takes the most): a run that cannot
            # be stopped never has another one evicted in its place.
            log.exception(
                "the execution that took the most of the disk could not be stopped; "
                "the disk watch tries again",
                extra={"execution_id": run.execution.id},
            )

    def _with_position(self, execution: Execution) -> Execution:
        execution = self._recorder.latest(execution)
        if execution.status is not Status.PENDING:
            return execution
        return replace(execution, queue_position=self._admission.position(execution.id))

    def _enqueue(self, execution: Execution, spec: JobSpec, dispatch: Dispatch) -> None:
        self._waiting[execution.id] = (execution, spec, dispatch)
        self._admission.enqueue(execution.id, execution.job_name, spec.max_concurrent)
        self._admit()

    def _admit(self) -> None:
        """Starts every waiting execution that a free slot now allows, in FIFO order.
        While the store is stalled, none: each would fail at its first write, and they
        wait in the queue instead (the disk watch admits them once it writes again, within
        a second)."""
        if self._closing or self._store.stalled:
            return
        refused = False
        for execution_id in self._admission.admit():
            execution, spec, dispatch = self._waiting.pop(execution_id)
            # The flags may have changed since the trigger (a restart): checked at the start.
            refusal = self._policy_refusal(spec)
            if refusal is not None:
                self._refuse(execution, refusal)
                self._admission.release(execution_id)
                refused = True
                continue
            run = self._new_run(execution, spec, dispatch)
            self._spawn(run, run.run())
        if refused:
            self._admit()

    def _policy_refusal(self, spec: JobSpec) -> HostPolicyRefused | None:
        """Why the agent's current host policy refuses a run of the job, if it does."""
        try:
            check_host_policy(spec, self.host_policy, "spec")
        except InvalidSpec as error:
            return HostPolicyRefused(error.field, error.reason)
        return None

    def _refuse(self, execution: Execution, refusal: HostPolicyRefused) -> None:
        message = f"the agent's host policy refuses this run: {refusal}"
        log.warning("%s", message, extra={"execution_id": execution.id})
        self._recorder.transition(
            self._store.get_execution(execution.id),
            Status.FAILED,
            failure_reason=FailureReason.CREATE,
            message=message,
            finished_at=now(),
        )

    def _new_run(
        self, execution: Execution, spec: JobSpec, dispatch: Dispatch | None = None
    ) -> ExecutionRun:
        if dispatch is None:
            dispatch = self._store.get_request(execution.id).dispatch
        return ExecutionRun(
            execution,
            spec,
            self._runtime,
            self._recorder,
            log_dir=self._log_dir,
            default_grace=self._stop_grace,
            closing=lambda: self._closing,
            log_cap=self._log_cap(spec),
            dispatch=dispatch,
            outcome_recorded=lambda: self._release(execution.id),
            policy_refusal=self._policy_refusal,
            id_range=self.id_range,
            disk=self._disk,
        )

    def _log_cap(self, spec: JobSpec | None) -> int:
        """The job's log size cap, else the agent's."""
        if spec is not None and spec.max_log_bytes is not None:
            return spec.max_log_bytes
        return self._max_log_bytes

    async def _recover(self, execution: Execution) -> None:
        job = self._find_job(execution.job_name)
        if job is not None:
            # What it was triggered with, as it would run had the agent not gone down; the
            # job may have been registered again since.
            job = replace(job, spec=self._store.execution_spec(execution.id) or job.spec)
        if execution.status is Status.INITIALIZING:
            execution = await self._started_meanwhile(execution)
        if execution.status is Status.RUNNING:
            container_id = execution.container_id
            known = self._runtime.exit_status(container_id) is not None
            if job is not None and (known or await self._runtime.is_alive(container_id)):
                log.info(
                    "re-adopting execution %s", execution.id, extra={"execution_id": execution.id}
                )
                self._admission.occupy(execution.id, execution.job_name)
                run = self._new_run(execution, job.spec)
                self._spawn(run, run.adopt())
                return
            if job is not None and await self._resume_retry(execution, job.spec):
                return
            await self._runtime.remove(container_id)
            self._lost(execution, "the container was gone when the agent restarted")
            return
        # Pending or initializing: nothing of the job's process ran yet, so start afresh
        # (a container created but not started goes, and its monitor's exit record too).
        if execution.status is Status.INITIALIZING:
            await self._runtime.remove(execution.container_id)
            await self._runtime.forget(execution.container_id)
        if job is None:
            self._lost(execution, "the job was unregistered while the agent was down")
        elif execution.status is Status.PENDING:
            self._enqueue(execution, job.spec, self._store.get_request(execution.id).dispatch)
        elif (refusal := self._policy_refusal(job.spec)) is not None:
            self._refuse(execution, refusal)
        else:
            self._admission.occupy(execution.id, execution.job_name)
            run = self._new_run(execution, job.spec)
            self._spawn(run, run.run())

    async def _resume_retry(self, execution: Execution, spec: JobSpec) -> bool:
        """A Running execution whose recorded attempt had ended and was to be retried: the
        agent went down in the backoff or while starting the next attempt. That attempt's
        process is followed when it had started, else the attempt starts afresh (if the
        host policy still allows the job). False when the recorded attempt had not ended
        (its container is lost)."""
        attempts = self._store.list_attempts(execution.id)
        last = attempts[-1] if attempts else None
        if last is None or last.finished_at is None or last.number != execution.attempt:
            return False
        number = last.number + 1
        container_id = container_id_of(execution.id, number)
        started = await self._runtime.started_at(container_id)
        if started is not None:
            execution = self._recorder.update(
                replace(execution, container_id=container_id, attempt=number),
                EventKind.ATTEMPT_STARTED,
                f"attempt {number} started before the agent went down",
                Attempt(number, container_id, started),
            )
            self._admission.occupy(execution.id, execution.job_name)
            run = self._new_run(execution, spec)
            self._spawn(run, run.adopt())
            return True
        await self._runtime.remove(container_id)
        await self._runtime.forget(container_id)
        if (refusal := self._policy_refusal(spec)) is not None:
            self._refuse(execution, refusal)
            return True
        log.info(
            "execution %s: attempt %d starts after the agent went down",
            execution.id,
            number,
            extra={"execution_id": execution.id},
        )
        self._admission.occupy(execution.id, execution.job_name)
        run = self._new_run(execution, spec)
        self._spawn(run, run.resume(number, last.finished_at))
        return True

    async def _started_meanwhile(self, execution: Execution) -> Execution:
        """An Initializing execution whose first attempt's process was started before the
        agent went down (it died before recording RUNNING) is recorded Running then, so
        that it is followed to its end and never started again."""
        container_id = execution.container_id
        started = await self._runtime.started_at(container_id)
        if started is None:
            return execution
        log.info(
            "execution %s: its process started before the agent went down",
            execution.id,
            extra={"execution_id": execution.id},
        )
        attempt = Attempt(1, container_id, started)
        return self._recorder.transition(execution, Status.RUNNING, attempt, started_at=started)

    async def _remove_left(self, container_id: str) -> None:
        """Removes the container that an execution ended by an agent error left (the next
        start's sweep does it when this cannot)."""
        try:
            if container_id:
                await self._runtime.remove(container_id)
                await self._runtime.forget(container_id)
        except RuntimeLayerError as error:
            log.warning("container %s stays for the next start: %s", container_id, error)

    def _fail_unfinished(self, execution_id: str, error: BaseException) -> None:
        """An execution whose run died of an agent error still gets a terminal state."""
        execution = self._recorder.latest(self._store.get_execution(execution_id))
        if not execution.status.terminal:
            self._recorder.transition(
                execution,
                Status.FAILED,
                failure_reason=FailureReason.AGENT_ERROR,
                message=f"the agent failed: {error}",
                finished_at=now(),
            )

    def _lost(self, execution: Execution, message: str) -> None:
        self._recorder.transition(
            execution,
            Status.FAILED,
            failure_reason=FailureReason.AGENT_LOST,
            message=message,
            finished_at=now(),
        )

    def _spawn(self, run: ExecutionRun, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        run.task = task
        self._runs[run.execution.id] = run
        task.add_done_callback(lambda _: self._forget(run))

    def _forget(self, run: ExecutionRun) -> None:
        execution_id = run.execution.id
        if self._runs.get(execution_id) is run:
            del self._runs[execution_id]
        assert run.task is not None
        error = None if run.task.cancelled() else run.task.exception()
        try:
            if error is not None:
                where = {"execution_id": execution_id}
                log.error("execution %s: %s", execution_id, error, exc_info=error, extra=where)
                self._fail_unfinished(execution_id, error)
                # Its process must not run on untracked.
                cleanup = asyncio.create_task(self._remove_left(run.execution.container_id))
                self._cleanups.add(cleanup)
                cleanup.add_done_callback(self._cleanups.discard)
        finally:
            # Whatever recording the end did, the slot is free.
            self._release(execution_id)

    def _release(self, execution_id: str) -> None:
        """Frees the execution's slot (if it still holds one) for the next in the queue."""
        self._admission.release(execution_id)
        self._admit()


def _encode_token(kind: str, cursor: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{cursor}".encode()).decode()


def _execution_cursor(token: str) -> int:
    """The cursor of an executions page token: a row id as the agent writes it (decimal
    digits, within SQLite's integer); InvalidSpec for anything else."""
    cursor = _decode_token("e", token)
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 19 or int(cursor) > MAX_ROW_ID:
        raise InvalidSpec("page_token", "is not a token this agent gave out")
    return int(cursor)


def _decode_token(kind: str, token: str) -> str:
    """The cursor of a page token of this kind; InvalidSpec for anything else."""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except ValueError:
        text = ""
    if not text.startswith(f"{kind}:"):
        raise InvalidSpec("page_token", "is not a token this agent gave out")
    return text.removeprefix(f"{kind}:")
