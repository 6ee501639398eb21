"""The cron scheduler: schedules become executions with trigger SCHEDULER.

Each tick looks at every cron job: the schedule times since the last one it handled (or
since registration), the starting deadline, the concurrency policy and the history limits.
A time is handled once, whatever its outcome, so a failing trigger is never retried every
second, and after downtime at most one missed time is run (never a burst).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

from croniter import croniter

from agent import faults
from agent.domain import (
    ACTIVE_STATUSES,
    ConcurrencyPolicy,
    CronState,
    EventKind,
    Job,
    JobKind,
    JobNote,
    Trigger,
    TriggerKind,
)
from agent.errors import AgentError, InvalidSpec, ResourceExhausted, StoreUnwritable
from agent.executor.executor import Executor
from agent.spec import check_time_zone, validate_schedule
from agent.store import STALL_RETRY_SECONDS, Store

log = logging.getLogger(__name__)
# More missed times than this are reported, never replayed.
MISSED_REPORT_LIMIT = 100
IDLE_SECONDS = 60.0


class Clock(Protocol):
    """Where the scheduler reads the time and waits (a controllable one in tests)."""

    def now(self) -> datetime: ...
    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        """The current time, in UTC."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """Waits `seconds`."""
        await asyncio.sleep(seconds)


def schedule_times(job: Job, after: datetime) -> Iterator[datetime]:
    """The job's schedule times after `after`, in its time zone (UTC datetimes)."""
    zone = ZoneInfo(job.spec.cron.time_zone)
    times = croniter(job.spec.schedule, after.astimezone(zone), second_at_beginning=True)
    while True:
        yield times.get_next(datetime).astimezone(UTC)


def latest_time(job: Job, now: datetime) -> datetime:
    """The job's last schedule time at or before `now`."""
    zone = ZoneInfo(job.spec.cron.time_zone)
    previous = croniter(job.spec.schedule, now.astimezone(zone), second_at_beginning=True)
    before = previous.get_prev(datetime).astimezone(UTC)
    following = next(schedule_times(job, before))
    return following if following <= now else before


def schedule_problem(job: Job) -> str | None:
    """Why a stored cron job's schedule cannot run (a spec no validator saw), or None."""
    try:
        validate_schedule(job.spec.kind, job.spec.schedule, "schedule")
        check_time_zone(job.spec.cron.time_zone, "time_zone")
    except InvalidSpec as error:
        return str(error)
    return None


class CronScheduler:
    """Runs cron jobs on their schedules through the executor.

    One job whose schedule cannot be computed (a time zone or schedule that no validator
    saw, or a date that never comes) is marked, reported once and left alone: the others
    keep firing, and reading that job still works (without a next run).
    """

    def __init__(self, executor: Executor, store: Store, clock: Clock | None = None) -> None:
        self._executor = executor
        self._store = store
        self._clock = clock or SystemClock()
        self._wake = asyncio.Event()
        # Jobs that cannot be scheduled: name -> the spec version (updated_at) reported.
        self._broken: dict[str, datetime] = {}
        # Jobs whose schedule and time zone were found good: name -> spec version.
        self._checked: dict[str, datetime] = {}
        # True when the last tick left a time unhandled because the store could not write.
        self._left_for_store = False

    def next_run(self, job: Job) -> datetime | None:
        """When the job runs next (None when suspended, not a cron job, or unschedulable)."""
        if job.spec.kind is not JobKind.CRON or job.spec.cron.suspend or self._marked(job):
            return None
        state = self._store.get_cron_state(job.name)
        after = max(self._clock.now(), state.last_schedule_time or job.updated_at)
        try:
            return next(schedule_times(job, after))
        except Exception as error:  # croniter gives up on dates that never come, for one
            self._mark(job, f"its next schedule time cannot be computed: {error}")
            return None

    def _marked(self, job: Job) -> bool:
        """True when the job cannot be scheduled (checked once per spec version)."""
        if self._broken.get(job.name) == job.updated_at:
            return True
        if self._checked.get(job.name) == job.updated_at:
            return False
        problem = schedule_problem(job)
        if problem is not None:
            self._mark(job, problem)
            return True
        self._checked[job.name] = job.updated_at
        return False

    def _mark(self, job: Job, problem: str) -> None:
        """Reports once per spec version that the job cannot be scheduled."""
        if self._broken.get(job.name) == job.updated_at:
            return
        self._broken[job.name] = job.updated_at
        message = (
            f"cron job {job.name} cannot be scheduled and starts no run until its spec "
            f"is replaced: {problem}"
        )
        log.error("%s", message)
        try:
            self._executor.record_cron_state(
                job.name,
                self._store.get_cron_state(job.name),
                JobNote(EventKind.SCHEDULE_MISSED, message),
            )
        except Exception:
            log.exception("cron job %s: recording that it cannot be scheduled", job.name)

    def wake(self) -> None:
        """Looks again now (a job was registered, changed or removed)."""
        self._wake.set()

    async def run_forever(self) -> None:
        """Ticks at every schedule time until cancelled.

        One job's failure stays its own (see tick); a failure of the tick as a whole (the
        store, say) ends this coroutine, for its supervisor (agent.supervisor) to log,
        count, show in health and restart with a backoff.
        """
        while True:
            await self.tick()
            upcoming = [when for job in self._cron_jobs() if (when := self.next_run(job))]
            delay = IDLE_SECONDS
            if upcoming:
                delay = max(0.0, (min(upcoming) - self._clock.now()).total_seconds())
            if self._left_for_store:
                delay = min(delay, STALL_RETRY_SECONDS)
            self._wake.clear()
            sleeper = asyncio.ensure_future(self._clock.sleep(delay))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait([sleeper, waker], return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    async def tick(self) -> None:
        """Handles every schedule time that is due now, job by job: one job's failure is
        logged, and the others are handled all the same."""
        faults.hit("scheduler")
        self._left_for_store = False
        for job in self._cron_jobs():
            try:
                if not job.spec.cron.suspend and not self._marked(job):
                    await self._handle(job)
                policy = job.spec.cron
                await self._executor.retention.prune_history(
                    job.name, policy.successful_history_limit, policy.failed_history_limit
                )
            except StoreUnwritable as error:
                # Not marked: the time stays unhandled and is tried again soon (run_forever).
                self._left_for_store = True
                log.warning("cron job %s: its schedule waits for the store: %s", job.name, error)
            except Exception:
                # Not marked: the time stays unhandled and is tried again at the next tick.
                log.exception("cron job %s: handling its schedule failed", job.name)

    def _cron_jobs(self) -> list[Job]:
        return [job for job in self._store.list_jobs() if job.spec.kind is JobKind.CRON]

    async def _handle(self, job: Job) -> None:
        now = self._clock.now()
        state = self._store.get_cron_state(job.name)
        latest = latest_time(job, now)
        since = state.last_schedule_time or job.updated_at
        if latest <= since:
            return
        due = 0
        for when in schedule_times(job, since):
            if when > latest or due > MISSED_REPORT_LIMIT:
                break
            due += 1
        missed = state.missed + due - 1
        if due > 1:
            many = f"more than {MISSED_REPORT_LIMIT}" if due > MISSED_REPORT_LIMIT else str(due - 1)
            # The missed times are handled up to the one before `latest`, which is still due.
            before_latest = latest_time(job, latest - timedelta(microseconds=1))
            message = (
                f"{many} schedule times passed without a run (the agent was down or "
                f"behind); at most the latest, {latest.isoformat()}, runs"
            )
            note = JobNote(EventKind.SCHEDULE_MISSED, message, before_latest)
            self._save(job, state, before_latest, missed, note=note)
            state = self._store.get_cron_state(job.name)
        deadline = job.spec.cron.starting_deadline_seconds
        if deadline is not None and (now - latest).total_seconds() > deadline:
            message = f"the run of {latest.isoformat()} missed its starting deadline of {deadline}s"
            self._save(
                job,
                state,
                latest,
                missed + 1,
                note=JobNote(EventKind.SCHEDULE_MISSED, message, latest),
            )
            return
        active = self._store.list_executions(job_name=job.name, statuses=ACTIVE_STATUSES)
        policy = job.spec.cron.concurrency_policy
        if active and policy is ConcurrencyPolicy.FORBID:
            message = (
                f"the run of {latest.isoformat()} was skipped: execution {active[0].id} "
                "is still active (concurrency_policy forbid)"
            )
            self._save(
                job,
                state,
                latest,
                missed,
                skipped=state.skipped + 1,
                note=JobNote(EventKind.SCHEDULE_SKIPPED, message, latest),
            )
            return
        trigger = Trigger(
            TriggerKind.SCHEDULER, reason=f"schedule {job.spec.schedule} at {latest.isoformat()}"
        )
        # Recorded with the execution, in one transaction: a time is never run twice.
        handled = replace(state, last_schedule_time=latest, missed=missed)
        replacing = [e.id for e in active] if policy is ConcurrencyPolicy.REPLACE else []
        try:
            await self._executor.trigger(job.name, trigger, cron_state=handled, replacing=replacing)
        except StoreUnwritable as error:
            # Before ResourceExhausted, of which a full disk is one. When the store cannot
            # take this note either, the time stays unhandled for the next tick.
            note = JobNote(
                EventKind.SCHEDULE_MISSED,
                f"the run of {latest.isoformat()} was missed: {error}",
                latest,
            )
            self._save(job, state, latest, missed + 1, note=note)
        except ResourceExhausted as error:
            # A full queue: the run is skipped and says why, rather than queued.
            message = f"the run of {latest.isoformat()} was skipped: {error}"
            note = JobNote(EventKind.SCHEDULE_SKIPPED, message, latest)
            self._save(job, state, latest, missed, skipped=state.skipped + 1, note=note)
        except AgentError as error:
            # Handled all the same: the next try is at the next schedule time.
            log.warning("cron job %s: the run of %s could not start: %s", job.name, latest, error)
            self._save(job, state, latest, missed)

    def _save(
        self,
        job: Job,
        state: CronState,
        handled: datetime,
        missed: int,
        skipped: int | None = None,
        execution_id: str | None = None,
        note: JobNote | None = None,
    ) -> None:
        if note is not None:
            log.info("cron job %s: %s", job.name, note.message)
        self._executor.record_cron_state(
            job.name,
            CronState(
                last_schedule_time=handled,
                last_execution_id=state.last_execution_id if execution_id is None else execution_id,
                skipped=state.skipped if skipped is None else skipped,
                missed=missed,
            ),
            note,
        )
