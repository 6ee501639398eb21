"""One execution's life: prepare, attempts (with retries), deadline, cancel, outcome.

An ExecutionRun is driven by one asyncio task. It knows which phase it is in, so a
cancel stops the container while a process runs and interrupts the task otherwise.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from agent import faults
from agent.diskspace import DiskSpace
from agent.domain import (
    Attempt,
    CommandSpec,
    Dispatch,
    EventKind,
    Execution,
    FailureReason,
    IdRange,
    InitFailurePolicy,
    InitStep,
    JobSpec,
    Status,
)
from agent.errors import ResourceExhausted, StoreStalled, StoreUnwritable
from agent.executor.init_steps import StepFailed, run_steps
from agent.executor.logs import log_file_limit
from agent.executor.ports import ContainerRuntime
from agent.executor.recorder import Recorder
from agent.logsetup import current_execution
from agent.runtime.errors import (
    ContainerCreateError,
    ContainerStartError,
    ImagePullError,
    MonitorLost,
)
from agent.runtime.images import Image
from agent.runtime.manager import ContainerRequest, ExitStatus
from agent.store import STALL_RETRY_SECONDS

# errors.on_init_failure restart and backoff run the init steps at most this many times.
INIT_RUN_LIMIT = 3
INIT_BACKOFF_SECONDS = 1.0


class Phase(enum.Enum):
    """Where a run is; it decides what a cancel does."""

    PREPARING = "preparing"
    RUNNING = "running"
    BACKOFF = "backoff"
    ENDING = "ending"
    # The outcome is recorded; the container is being removed (a stop lets this finish).
    REMOVING = "removing"


def now() -> datetime:
    """The wall time, in UTC."""
    return datetime.now(UTC)


def container_id_of(execution_id: str, attempt: int) -> str:
    """The container of an attempt: unique per execution and attempt."""
    return f"ja-{execution_id}" if attempt == 1 else f"ja-{execution_id}-{attempt}"


def log_file_of(log_dir: Path, execution_id: str, attempt: int) -> Path:
    """The CRI-format log file of an attempt."""
    return log_dir / execution_id / f"{attempt}.log"


class ExecutionRun:
    """Drives one execution from Pending (or a re-adopted Running) to its terminal state."""

    def __init__(
        self,
        execution: Execution,
        spec: JobSpec,
        runtime: ContainerRuntime,
        recorder: Recorder,
        *,
        log_dir: Path,
        default_grace: float,
        closing: Callable[[], bool],
        log_cap: int,
        dispatch: Dispatch | None = None,
        outcome_recorded: Callable[[], None] | None = None,
        id_range: Callable[[JobSpec], IdRange | None] | None = None,
        disk: DiskSpace | None = None,
        policy_refusal: Callable[[JobSpec], Exception | None] | None = None,
    ) -> None:
        """`outcome_recorded` is called once the terminal state is stored, before the
        container is removed: the execution no longer needs its admission slot.
        `id_range` gives the host ids a job's user namespace maps to (None: the host's
        namespace); it raises ResourceExhausted when the job can have none. `disk` tells a
        failure whether the data directory's filesystem is full. `policy_refusal` says why
        the agent's host policy refuses a new attempt now (None: it allows it)."""
        dispatch = dispatch or Dispatch()
        self.execution = execution
        self.spec = spec.with_dispatch(dispatch)
        self._files = {spec.dispatch.payload_path: dispatch.payload} if dispatch.payload else {}
        self._runtime = runtime
        self._recorder = recorder
        self._log_dir = log_dir
        self._default_grace = default_grace
        self._log_cap = log_cap
        self._closing = closing
        self._outcome_recorded = outcome_recorded
        self._id_range = id_range or (lambda _spec: None)
        self._disk = disk
        # Why the agent's host policy refuses a new attempt of the job now, if it does.
        self._policy_refusal = policy_refusal or (lambda _spec: None)
        # Why the agent stopped the process to free the disk, once it did.
        self._evicted = ""
        self._phase = Phase.PREPARING
        self._cancel_requested = False
        self._deadline_passed = False
        self._deadline: float | None = None
        self._attempt_started = execution.started_at or now()
        self.task: asyncio.Task[None] | None = None

    @property
    def removing(self) -> bool:
        """True once the outcome is recorded and only the container's removal is left."""
        return self._phase is Phase.REMOVING

    @property
    def grace(self) -> float:
        """The job's stop grace period, else the agent's."""
        if self.spec.stop_grace_seconds is not None:
            return self.spec.stop_grace_seconds
        return self._default_grace

    async def cancel(self, grace: float | None, signal: str | None = None) -> None:
        """Stops the running process (stop signal, grace, SIGKILL) or interrupts the task."""
        self._cancel_requested = True
        if self._phase is Phase.RUNNING:
            await self._runtime.stop(
                self.execution.container_id, self.grace if grace is None else grace, signal
            )
        elif self._phase not in (Phase.ENDING, Phase.REMOVING) and self.task is not None:
            self.task.cancel()

    async def evict(self, why: str) -> None:
        """Stops the running process to free the disk; the execution ends Failed saying why.
        A stop that fails leaves the run unevicted (it raises), so that it stays the one
        to evict rather than another run taking its place."""
        if self._phase is Phase.RUNNING and not self._evicted:
            # Noted before the stop: the run's own wait may see the end before the stop
            # returns, and must read it as the eviction.
            self._evicted = why
            try:
                await self._runtime.stop(self.execution.container_id, self.grace)
            except Exception:
                self._evicted = ""
                raise

    @property
    def running(self) -> bool:
        """True while the attempt's process runs (and may be evicted)."""
        return self._phase is Phase.RUNNING

    @property
    def evicted(self) -> bool:
        """True once the agent stopped the process to free the disk."""
        return bool(self._evicted)

    async def run(self) -> None:
        """Pending (or Initializing after a restart) -> ... -> terminal."""
        current_execution.set(self.execution.id)
        try:
            await self._run()
        except StoreUnwritable as error:
            await self._end_unwritten(error)

    async def _run(self) -> None:
        self._deadline = self._deadline_from(self.execution.created_at)
        image: Image | None = None
        try:
            if self.execution.status is Status.PENDING:
                await self._record_start()
            async with asyncio.timeout_at(self._deadline):
                image = await self._prepare()
                if image is None or not await self._start_attempt(image, 1):
                    return
        except TimeoutError:
            await self._remove_current()
            self._fail(FailureReason.DEADLINE_EXCEEDED, self._deadline_message())
            await self._forget_current()
            return
        except asyncio.CancelledError:
            await self._take_back()
            return
        await self._attempts(image)

    async def _record_start(self) -> None:
        """Records Initializing. While the store is stalled, tries again every
        STALL_RETRY_SECONDS, holding its slot: nothing is done yet, so nothing is lost by
        waiting (the queue behind it waits for the store in any case)."""
        while True:
            try:
                self._record(Status.INITIALIZING)
                return
            except StoreStalled:
                await asyncio.sleep(STALL_RETRY_SECONDS)

    async def adopt(self) -> None:
        """Follows a container that was running when the agent restarted."""
        current_execution.set(self.execution.id)
        self._deadline = self._deadline_from(self.execution.created_at)
        started = self._recorder.last_attempt_start(self.execution)
        if started is not None:
            self._attempt_started = started
        try:
            await self._attempts(None)
        except StoreUnwritable as error:
            await self._end_unwritten(error)

    async def resume(self, number: int, previous_ended: datetime) -> None:
        """Starts attempt `number` of an execution whose previous attempt ended at
        `previous_ended` and was to be retried when the agent went down (in the backoff,
        or before the next attempt's process started), after what is left of the backoff,
        and follows it to the end."""
        current_execution.set(self.execution.id)
        self._deadline = self._deadline_from(self.execution.created_at)
        waited = (now() - previous_ended).total_seconds()
        delay = max(0.0, self.spec.retry.delay(number - 1) - waited)
        self._phase = Phase.BACKOFF
        try:
            try:
                image = await self._retry(delay, None, number)
            except asyncio.CancelledError:
                await self._take_back()
                return
            if image is not None:
                await self._attempts(image)
        except StoreUnwritable as error:
            await self._end_unwritten(error)

    async def _end_unwritten(self, error: StoreUnwritable) -> None:
        """A transition the store could not take (a full disk, a stalled store): the run
        ends Failed (the terminal state is kept until it can be written), its container
        removed, its slot freed."""
        await self._remove_current()
        self._fail(FailureReason.AGENT_ERROR, str(error))
        self._phase = Phase.REMOVING
        if self._outcome_recorded is not None:
            self._outcome_recorded()
        await self._forget_current()

    def _deadline_from(self, start: datetime) -> float | None:
        if self.spec.timeout_seconds is None:
            return None
        elapsed = (now() - start).total_seconds()
        return asyncio.get_running_loop().time() + self.spec.timeout_seconds - elapsed

    def _deadline_message(self) -> str:
        return f"the job's timeout of {self.spec.timeout_seconds:g}s passed"

    # Preparing: image, init steps.

    async def _prepare(self) -> Image | None:
        """Pulls the image and runs the init steps; None when that failed (and is recorded)."""
        try:
            image = await self._runtime.pull(self.spec.image)
        except ImagePullError as error:
            self._fail(FailureReason.IMAGE_PULL, str(error))
            return None
        if self.spec.init_steps:
            failure = await self._run_init(image)
            if failure is not None:
                self._fail(FailureReason.INIT, failure)
                return None
        return image

    async def _run_init(self, image: Image) -> str | None:
        """Runs the init steps as errors.on_init_failure says; returns why they failed."""

        def report(kind: EventKind, step_id: str, message: str) -> None:
            self._recorder.event(self.execution, kind, step_id, message)

        async def run_in_container(step: InitStep, argv: Sequence[str], timeout: float) -> int:
            index = self.spec.init_steps.index(step)
            container_id = f"{container_id_of(self.execution.id, 1)}-init{index}"
            log_file = self._log_dir / self.execution.id / f"init-{step.id}.log"
            try:
                request = self._request(container_id, CommandSpec(entrypoint=tuple(argv)), log_file)
                await self._runtime.run(request, image)
                return (await self._wait(container_id, timeout)).exit_code
            except (
                ContainerCreateError,
                ContainerStartError,
                MonitorLost,
                ResourceExhausted,
            ) as error:
                raise StepFailed(str(error)) from None
            finally:
                await self._runtime.remove(container_id)
                await self._runtime.forget(container_id)

        policy = self.spec.on_init_failure
        runs = 1 if policy is InitFailurePolicy.FAIL else INIT_RUN_LIMIT
        failure = None
        for run in range(runs):
            failure = await run_steps(
                self.spec.init_steps, run_in_container, report, host_network=self.spec.host_network
            )
            if failure is None:
                return None
            if policy is InitFailurePolicy.BACKOFF and run + 1 < runs:
                await asyncio.sleep(INIT_BACKOFF_SECONDS * 2**run)
        return failure

    # Attempts.

    def _request(self, container_id: str, command: CommandSpec, log_file: Path) -> ContainerRequest:
        spec = self.spec
        return ContainerRequest(
            container_id=container_id,
            image=spec.image,
            log_file=log_file,
            command=command,
            env=spec.env,
            hostname=spec.name,
            resources=spec.resources,
            user=spec.user,
            labels=spec.labels,
            stop_signal=spec.stop_signal,
            log_size_max=log_file_limit(self._log_cap),
            mounts=spec.storage,
            host_network=spec.host_network,
            files=self._files,
            privileged=spec.privileged,
            capabilities=spec.capabilities,
            id_range=self._id_range(spec),
        )

    async def _start_attempt(self, image: Image, number: int) -> bool:
        """Creates and starts the attempt's container; False when that failed (recorded)."""
        container_id = container_id_of(self.execution.id, number)
        try:
            request = self._request(
                container_id,
                self.spec.command,
                log_file_of(self._log_dir, self.execution.id, number),
            )
        except ResourceExhausted as error:
            self._fail(FailureReason.CREATE, str(error))
            return False
        # The new container is the execution's from now on (for a cancel and for cleanup).
        self.execution = replace(self.execution, container_id=container_id, attempt=number)
        try:
            # Created and started in one step; a cancel before the start leaves the
            # container created only, one during the start waits for it (see _take_back).
            await self._runtime.run(request, image)
        except ContainerCreateError as error:
            self._fail(FailureReason.CREATE, str(error))
            await self._forget_current()
            return False
        except ContainerStartError as error:
            await self._runtime.remove(container_id)
            self._fail(FailureReason.START, str(error))
            await self._forget_current()
            return False
        faults.hit("started")
        self._attempt_started = now()
        attempt = Attempt(number, container_id, self._attempt_started)
        if number == 1:
            self._record(
                Status.RUNNING,
                attempt,
                started_at=self._attempt_started,
                image=f"{image.reference}@{image.digest}",
            )
        else:
            self.execution = self._recorder.update(
                self.execution, EventKind.ATTEMPT_STARTED, f"attempt {number} started", attempt
            )
        self._phase = Phase.RUNNING
        return True

    async def _attempts(self, image: Image | None) -> None:
        """Waits for each attempt; retries as the policy allows; records the outcome."""
        policy = self.spec.retry
        while True:
            self._phase = Phase.RUNNING
            container_id = self.execution.container_id
            remaining = None
            if self._deadline is not None:
                remaining = max(0.0, self._deadline - asyncio.get_running_loop().time())
            try:
                exit_status = await self._wait(container_id, remaining, deadline=True)
            except MonitorLost as error:
                self._phase = Phase.ENDING
                attempt = self._lost_attempt(error)
                if not self._end_as_asked(None, attempt):
                    self._fail(FailureReason.AGENT_LOST, str(error), attempt=attempt)
                await self._remove_after_outcome(container_id)
                return
            self._phase = Phase.ENDING
            attempt = self._finished_attempt(exit_status)
            number = self.execution.attempt
            retry = (
                attempt.failure_reason is not None
                and not self._cancel_requested
                and not self._evicted
                and not self._deadline_passed
                and number <= policy.backoff_limit
                and policy.retries(exit_status.exit_code)
            )
            if not retry:
                # The outcome is known: record it first, then remove the container (a crash
                # in between leaves a bundle that the next start sweeps away). A terminal
                # state is never lost to a full disk (the recorder keeps it).
                asked = self._cancel_requested or self._deadline_passed or bool(self._evicted)
                self._finish(exit_status, attempt)
                # An end read from the exit record alone is read the same way again from it.
                await self._remove_after_outcome(container_id, keep_exit_record=not asked)
                return
            await self._runtime.remove(container_id)
            delay = policy.delay(number)
            try:
                self.execution = self._recorder.update(
                    self.execution,
                    EventKind.ATTEMPT_FAILED,
                    f"attempt {number} {attempt.message}; retrying in {delay:g}s",
                    attempt,
                )
            except StoreUnwritable as error:
                # No retry that cannot be recorded: the attempt's outcome ends the run.
                reason = attempt.failure_reason or FailureReason.EXIT_CODE
                message = f"the process {attempt.message}; not retried: {error}"
                self._fail(reason, message, exit_status.exit_code, attempt)
                await self._remove_after_outcome(container_id, keep_exit_record=True)
                return
            await self._runtime.forget(container_id)
            self._phase = Phase.BACKOFF
            try:
                image = await self._retry(delay, image, number + 1)
            except asyncio.CancelledError:
                await self._take_back()
                return
            if image is None:
                return

    async def _remove_after_outcome(
        self, container_id: str, keep_exit_record: bool = False
    ) -> None:
        """Removes the container of the attempt whose outcome is recorded (a crash in
        between leaves a bundle that the next start sweeps away); a lost monitor's
        process is killed on the way. With `keep_exit_record`, the container's exit
        record stays while the end waits in memory for room in the store: should the
        agent die before it is written, the next agent reads the same outcome from that
        record (the executor drops it once the end is written). An end that a cancel, the
        deadline or an eviction decided is not in the record: a next agent would take the
        record for a plain exit, and could retry it."""
        self._phase = Phase.REMOVING
        if self._outcome_recorded is not None:
            self._outcome_recorded()
        keep = keep_exit_record and self._recorder.keeps(self.execution.id)
        await self._runtime.remove(container_id, forget=not keep)

    async def _retry(self, delay: float, image: Image | None, number: int) -> Image | None:
        """Waits out the backoff and starts the next attempt; None when the execution ended."""
        try:
            async with asyncio.timeout_at(self._deadline):
                await asyncio.sleep(delay)
                if self._cancel_requested:
                    raise asyncio.CancelledError
                refusal = self._policy_refusal(self.spec)
                if refusal is not None:
                    message = f"the agent's host policy refuses attempt {number}: {refusal}"
                    self._fail(FailureReason.CREATE, message)
                    return None
                image = image or await self._runtime.pull(self.spec.image)
                started = await self._start_attempt(image, number)
        except TimeoutError:
            await self._remove_current()
            self._fail(FailureReason.DEADLINE_EXCEEDED, self._deadline_message())
            await self._forget_current()
            return None
        except ImagePullError as error:
            self._fail(FailureReason.IMAGE_PULL, str(error))
            return None
        return image if started else None

    async def _wait(
        self, container_id: str, timeout: float | None, deadline: bool = False
    ) -> ExitStatus:
        """Waits for the container's end; past `timeout` stops it (and notes the deadline)."""
        if timeout is None:
            return await self._runtime.wait(container_id)
        waiting = asyncio.ensure_future(self._runtime.wait(container_id))
        try:
            done, _ = await asyncio.wait([waiting], timeout=timeout)
            if not done:
                self._deadline_passed = self._deadline_passed or deadline
                await self._runtime.stop(container_id, self.grace)
            return await waiting
        finally:
            waiting.cancel()

    def _lost_attempt(self, error: MonitorLost) -> Attempt:
        return Attempt(
            self.execution.attempt,
            self.execution.container_id,
            self._attempt_started,
            now(),
            failure_reason=FailureReason.AGENT_LOST,
            message=str(error),
        )

    def _finished_attempt(self, exit_status: ExitStatus) -> Attempt:
        code = exit_status.exit_code
        reason = None
        message = "succeeded"
        if exit_status.oom_killed:
            reason, message = FailureReason.OOM_KILLED, "was killed by its memory limit"
        elif code != 0:
            reason, message = FailureReason.EXIT_CODE, f"exited with code {code}"
        return Attempt(
            self.execution.attempt,
            self.execution.container_id,
            self._attempt_started,
            now(),
            code,
            reason,
            message,
        )

    # Outcomes.

    def _end_as_asked(self, code: int | None, attempt: Attempt) -> bool:
        """Records the end that a cancel, the deadline or an eviction asked for, if one
        did; False when none did."""
        if self._cancel_requested:
            self._record_cancelled(exit_code=code, attempt=attempt)
        elif self._deadline_passed:
            self._fail(FailureReason.DEADLINE_EXCEEDED, self._deadline_message(), code, attempt)
        elif self._evicted:
            self._fail(FailureReason.EXIT_CODE, self._evicted, code, attempt)
        else:
            return False
        return True

    def _finish(self, exit_status: ExitStatus, attempt: Attempt) -> None:
        code = exit_status.exit_code
        if self._end_as_asked(code, attempt):
            return
        if attempt.failure_reason is None:
            self._record(Status.COMPLETED, attempt, exit_code=0, finished_at=now())
        else:
            tries = self.execution.attempt
            prefix = "the process" if tries == 1 else f"after {tries} attempts, the process"
            message = f"{prefix} {attempt.message}"
            if self._disk is not None and self._disk.low():
                # The process's own error (ENOSPC) is in its log only if that had room.
                message = f"{message}; {self._disk.describe()}"
            self._fail(attempt.failure_reason, message, code, attempt)

    def _record(self, status: Status, attempt: Attempt | None = None, **changes: object) -> None:
        self.execution = self._recorder.transition(self.execution, status, attempt, **changes)

    def _record_cancelled(
        self, exit_code: int | None = None, attempt: Attempt | None = None
    ) -> None:
        self._record(
            Status.CANCELLED,
            attempt,
            exit_code=exit_code,
            message="cancelled on request",
            finished_at=now(),
        )

    def _fail(
        self,
        reason: FailureReason,
        message: str,
        exit_code: int | None = None,
        attempt: Attempt | None = None,
    ) -> None:
        self._record(
            Status.FAILED,
            attempt,
            failure_reason=reason,
            message=message,
            exit_code=exit_code,
            finished_at=now(),
        )

    async def _remove_current(self) -> None:
        await self._runtime.remove(self.execution.container_id)

    async def _forget_current(self) -> None:
        """Drops the current container's exit record once the outcome is stored. A
        container made but not run to its end by the attempt loop (cancelled or failed
        before it ran, stopped at the deadline while starting) has one too: conmon
        writes it when the container goes."""
        await self._runtime.forget(self.execution.container_id)

    async def _take_back(self) -> None:
        """After a cancel while no process ran: remove what was prepared and record it.

        On shutdown the execution stays as it is (re-raising the cancel), and starts
        afresh or is found lost when the agent comes back.
        """
        if self._closing():
            if await self._runtime.started_at(self.execution.container_id) is not None:
                # Its process runs: the next start records it Running and follows it.
                raise asyncio.CancelledError
            await self._remove_current()
            # The store never named this container as started: nothing reads its exit
            # record again.
            await self._forget_current()
            raise asyncio.CancelledError
        await self._remove_current()
        self._record_cancelled()
        await self._forget_current()
