"""The executor: runs executions through the state machine and records every transition.

It knows nothing of gRPC, subprocesses or SQL: it drives a ContainerRuntime and a Store,
and publishes every recorded transition to watchers.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from agent.domain import (
    ACTIVE_STATUSES,
    CommandSpec,
    EventKind,
    Execution,
    ExecutionEvent,
    FailureReason,
    ImageSpec,
    InitFailurePolicy,
    InitStep,
    Job,
    JobSpec,
    LogLine,
    Status,
    Trigger,
)
from agent.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from agent.executor.admission import Admission
from agent.executor.events import EventBus
from agent.executor.init_steps import StepFailed, run_steps
from agent.executor.logs import LogQuery, read_log
from agent.executor.machine import check_transition
from agent.runtime.errors import ContainerCreateError, ContainerStartError, ImagePullError
from agent.runtime.images import Image
from agent.runtime.manager import ContainerRequest, ExitStatus
from agent.store import StaleTransition, Store

log = logging.getLogger(__name__)
# errors.on_init_failure restart and backoff run the init steps at most this many times.
INIT_RUN_LIMIT = 3
INIT_BACKOFF_SECONDS = 1.0


class ContainerRuntime(Protocol):
    """What the executor needs of the runtime layer (ContainerManager, or a fake in tests)."""

    async def pull(self, image: ImageSpec) -> Image: ...
    async def create(self, request: ContainerRequest, image: Image) -> None: ...
    async def start(self, container_id: str) -> None: ...
    async def wait(self, container_id: str) -> ExitStatus: ...
    def exit_status(self, container_id: str) -> ExitStatus | None: ...
    async def is_alive(self, container_id: str) -> bool: ...
    async def stop(self, container_id: str, grace_seconds: float) -> None: ...
    async def remove(self, container_id: str) -> None: ...
    def forget(self, container_id: str) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


def _monotonic() -> float:
    return asyncio.get_running_loop().time()


def _deadline_message(spec: JobSpec) -> str:
    return f"the job's timeout of {spec.timeout_seconds:g}s passed"


class Executor:
    """Owns every execution of the node from trigger to terminal state."""

    def __init__(
        self,
        store: Store,
        runtime: ContainerRuntime,
        log_dir: Path,
        stop_grace: float = 10.0,
        node_limit: int = 64,
    ) -> None:
        self._store = store
        self._runtime = runtime
        self._log_dir = log_dir
        self._stop_grace = stop_grace
        self._bus = EventBus()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel_requested: set[str] = set()
        self._deadline_passed: set[str] = set()
        self._specs: dict[str, JobSpec] = {}
        self._closing = False
        self._node_limit = node_limit
        self._admission = Admission(node_limit)
        self._waiting: dict[str, tuple[Execution, JobSpec]] = {}

    # Jobs

    def register_jobs(
        self, specs: Sequence[JobSpec], spec_yaml: str, replace_existing: bool
    ) -> list[Job]:
        """Registers jobs; an existing job with another spec needs `replace_existing`.

        Either every job is registered or none is.
        """
        now = _now()
        jobs = []
        for spec in specs:
            existing = self._find_job(spec.name)
            if existing is not None and existing.spec != spec and not replace_existing:
                raise AlreadyExists(f"job {spec.name!r} exists with another spec (use replace)")
            created = existing.created_at if existing is not None else now
            updated = now if existing is None or existing.spec != spec else existing.updated_at
            jobs.append(Job(spec=spec, created_at=created, updated_at=updated, spec_yaml=spec_yaml))
        for job in jobs:
            self._store.put_job(job)
        return jobs

    def get_job(self, name: str) -> Job:
        """Returns a job; raises NotFound."""
        return self._store.get_job(name)

    def list_jobs(self) -> list[Job]:
        """Returns every job, by name."""
        return self._store.list_jobs()

    def unregister_job(self, name: str) -> None:
        """Removes a job that has no active execution."""
        self._store.get_job(name)
        if self._store.list_executions(job_name=name, statuses=ACTIVE_STATUSES):
            raise FailedPrecondition(f"job {name!r} has active executions; cancel them first")
        self._store.delete_job(name)

    def _find_job(self, name: str) -> Job | None:
        try:
            return self._store.get_job(name)
        except NotFound:
            return None

    # Executions

    async def trigger(self, job_name: str, trigger: Trigger) -> Execution:
        """Creates a Pending execution of the job and starts running it."""
        if self._closing:
            raise Unavailable("the agent is shutting down")
        job = self._store.get_job(job_name)
        execution_id = uuid.uuid4().hex
        execution = Execution(
            id=execution_id,
            job_name=job.name,
            status=Status.PENDING,
            trigger=trigger,
            container_id=f"ja-{execution_id}",
            created_at=_now(),
            image=job.spec.image.name,
        )
        self._bus.publish(self._store.insert_execution(execution))
        self._enqueue(execution, job.spec)
        position = self._admission.position(execution.id)
        if position:
            limit = "the node's" if self._admission.active >= self._node_limit else "the job's"
            message = f"waiting for a slot: {limit} concurrency limit is reached"
            self._bus.publish(self._store.append_event(execution, EventKind.QUEUED, "", message))
            return replace(execution, queue_position=position)
        return execution

    def get_execution(self, execution_id: str) -> Execution:
        """Returns an execution (with its queue position while it waits); raises NotFound."""
        return self._with_position(self._store.get_execution(execution_id))

    def _with_position(self, execution: Execution) -> Execution:
        if execution.status is not Status.PENDING:
            return execution
        return replace(execution, queue_position=self._admission.position(execution.id))

    def _enqueue(self, execution: Execution, spec: JobSpec) -> None:
        self._waiting[execution.id] = (execution, spec)
        self._admission.enqueue(execution.id, execution.job_name, spec.max_concurrent)
        self._admit()

    def _admit(self) -> None:
        """Starts every waiting execution that a free slot now allows, in FIFO order."""
        if self._closing:
            return
        for execution_id in self._admission.admit():
            execution, spec = self._waiting.pop(execution_id)
            self._spawn(execution, self._run(execution, spec))

    def list_executions(self, job_name: str = "") -> list[Execution]:
        """Returns executions newest first."""
        return [self._with_position(e) for e in self._store.list_executions(job_name=job_name)]

    async def cancel(self, execution_id: str, grace_seconds: float | None = None) -> Execution:
        """Stops an active execution and returns it once it is terminal."""
        execution = self._store.get_execution(execution_id)
        if execution.status.terminal:
            raise FailedPrecondition(
                f"execution {execution_id} already finished ({execution.status.value})"
            )
        if self._admission.withdraw(execution_id):
            del self._waiting[execution_id]
            return self._record_cancelled(execution)
        self._cancel_requested.add(execution_id)
        task = self._tasks.get(execution_id)
        grace = self._grace_of(execution_id) if grace_seconds is None else grace_seconds
        if execution.status is Status.RUNNING:
            await self._runtime.stop(execution.container_id, grace)
        elif task is not None:
            task.cancel()
        if task is not None:
            await asyncio.wait([task])
        execution = self._store.get_execution(execution_id)
        if not execution.status.terminal:
            # The task was cancelled before its first step, so it could record nothing.
            await self._runtime.remove(execution.container_id)
            execution = self._record_cancelled(execution)
        return execution

    async def watch(self, execution_id: str) -> AsyncIterator[ExecutionEvent]:
        """Yields the execution's latest event, then each later one; ends after the terminal one."""
        queue = self._bus.subscribe(execution_id)
        try:
            event = self._store.last_event(execution_id)
            yield event
            sequence = event.sequence
            while not event.execution.status.terminal:
                event = await queue.get()
                if event.sequence > sequence:
                    sequence = event.sequence
                    yield event
        finally:
            self._bus.unsubscribe(execution_id, queue)

    async def stream_logs(self, execution_id: str, query: LogQuery) -> AsyncIterator[LogLine]:
        """Yields the execution's output lines; with follow, until it ends."""
        queue = self._bus.subscribe(execution_id)
        ended = asyncio.Event()

        async def watch_end() -> None:
            while True:
                event = await queue.get()
                if event.execution.status.terminal:
                    ended.set()
                    return

        watcher = asyncio.create_task(watch_end())
        try:
            if self._store.get_execution(execution_id).status.terminal:
                ended.set()
            async for line in read_log(self.log_file(execution_id), query, ended):
                yield line
        finally:
            watcher.cancel()
            self._bus.unsubscribe(execution_id, queue)

    def log_file(self, execution_id: str) -> Path:
        """The CRI-format log file of the execution's (first) attempt."""
        return self._log_dir / execution_id / "1.log"

    # Lifecycle

    async def start(self) -> None:
        """Picks up what the store says was active when the agent last stopped."""
        for execution in reversed(self._store.list_executions(statuses=ACTIVE_STATUSES)):
            await self._recover(execution)
        self._admit()

    async def close(self) -> None:
        """Stops accepting triggers and lets go of running containers (they keep running)."""
        self._closing = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _recover(self, execution: Execution) -> None:
        if execution.status is Status.RUNNING:
            if self._runtime.exit_status(execution.container_id) is not None or (
                await self._runtime.is_alive(execution.container_id)
            ):
                log.info("re-adopting execution %s", execution.id)
                deadline = self._adopt_spec(execution)
                self._admission.occupy(execution.id, execution.job_name)
                self._spawn(execution, self._await_exit(execution, deadline))
                return
            await self._runtime.remove(execution.container_id)
            self._record(
                execution,
                Status.FAILED,
                failure_reason=FailureReason.AGENT_LOST,
                message="the container was gone when the agent restarted",
                finished_at=_now(),
            )
            return
        # Pending or initializing: nothing of the job's process ran yet, so start afresh.
        if execution.status is Status.INITIALIZING:
            await self._runtime.remove(execution.container_id)
        try:
            spec = self._store.get_job(execution.job_name).spec
        except NotFound:
            self._record(
                execution,
                Status.FAILED,
                failure_reason=FailureReason.AGENT_LOST,
                message="the job was unregistered while the agent was down",
                finished_at=_now(),
            )
            return
        if execution.status is Status.PENDING:
            self._enqueue(execution, spec)
        else:
            self._admission.occupy(execution.id, execution.job_name)
            self._spawn(execution, self._run(execution, spec))

    def _spawn(self, execution: Execution, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks[execution.id] = task
        task.add_done_callback(lambda _: self._forget(execution.id, task))

    def _adopt_spec(self, execution: Execution) -> float | None:
        """Remembers the job's spec for a re-adopted execution; returns its deadline."""
        spec = self._find_job(execution.job_name)
        if spec is None:
            return None
        self._specs[execution.id] = spec.spec
        if spec.spec.timeout_seconds is None:
            return None
        elapsed = (_now() - execution.created_at).total_seconds()
        return _monotonic() + spec.spec.timeout_seconds - elapsed

    def _grace_of(self, execution_id: str) -> float:
        """The job's stop grace period, else the agent's."""
        spec = self._specs.get(execution_id)
        if spec is not None and spec.stop_grace_seconds is not None:
            return spec.stop_grace_seconds
        return self._stop_grace

    def _forget(self, execution_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(execution_id) is task:
            del self._tasks[execution_id]
        self._cancel_requested.discard(execution_id)
        self._deadline_passed.discard(execution_id)
        self._specs.pop(execution_id, None)
        self._admission.release(execution_id)
        self._admit()
        if not task.cancelled() and task.exception() is not None:
            log.error("execution %s: %s", execution_id, task.exception())

    async def _run(self, execution: Execution, spec: JobSpec) -> None:
        """Pending -> Initializing -> Running -> terminal, for one execution."""
        container_id = execution.container_id
        self._specs[execution.id] = spec
        deadline = None if spec.timeout_seconds is None else _monotonic() + spec.timeout_seconds
        try:
            if execution.status is Status.PENDING:
                execution = self._record(execution, Status.INITIALIZING)
            async with asyncio.timeout_at(deadline):
                execution = await self._initialize(execution, spec)
        except TimeoutError:
            await self._runtime.remove(container_id)
            self._fail(execution, FailureReason.DEADLINE_EXCEEDED, _deadline_message(spec))
            return
        except asyncio.CancelledError:
            # Nothing of the job ran yet: take back what was prepared. On shutdown the
            # execution stays as it is and starts afresh when the agent comes back.
            await self._runtime.remove(container_id)
            if self._closing:
                raise
            self._record_cancelled(execution)
            return
        if execution.status is Status.RUNNING:
            await self._await_exit(execution, deadline)

    async def _initialize(self, execution: Execution, spec: JobSpec) -> Execution:
        """Pulls, creates and starts the container; returns the execution as it ends up."""
        container_id = execution.container_id
        try:
            image = await self._runtime.pull(spec.image)
        except ImagePullError as error:
            return self._fail(execution, FailureReason.IMAGE_PULL, str(error))
        if spec.init_steps:
            failure = await self._run_init(execution, spec, image)
            if failure is not None:
                return self._fail(execution, FailureReason.INIT, failure)
        request = self._request(execution, spec, container_id, spec.command,
                                self.log_file(execution.id))  # fmt: skip
        try:
            await self._runtime.create(request, image)
        except ContainerCreateError as error:
            return self._fail(execution, FailureReason.CREATE, str(error))
        try:
            await self._runtime.start(container_id)
        except ContainerStartError as error:
            await self._runtime.remove(container_id)
            return self._fail(execution, FailureReason.START, str(error))
        return self._record(
            execution,
            Status.RUNNING,
            started_at=_now(),
            image=f"{image.reference}@{image.digest}",
        )

    def _request(
        self,
        execution: Execution,
        spec: JobSpec,
        container_id: str,
        command: CommandSpec,
        log_file: Path,
    ) -> ContainerRequest:
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
        )

    async def _run_init(self, execution: Execution, spec: JobSpec, image: Image) -> str | None:
        """Runs the init steps as errors.on_init_failure says; returns why they failed."""

        def report(kind: EventKind, step_id: str, message: str) -> None:
            event = self._store.append_event(execution, kind, step_id, message)
            self._bus.publish(event)

        async def run_in_container(step: InitStep, argv: Sequence[str], timeout: float) -> int:
            index = spec.init_steps.index(step)
            container_id = f"{execution.container_id}-init{index}"
            log_file = self.log_file(execution.id).with_name(f"init-{step.id}.log")
            request = self._request(
                execution, spec, container_id, CommandSpec(entrypoint=tuple(argv)), log_file
            )
            try:
                await self._runtime.create(request, image)
                await self._runtime.start(container_id)
                waiting = asyncio.ensure_future(self._runtime.wait(container_id))
                try:
                    done, _ = await asyncio.wait([waiting], timeout=timeout)
                    if not done:
                        await self._runtime.stop(container_id, self._grace_of(execution.id))
                    return (await waiting).exit_code
                finally:
                    waiting.cancel()
            except (ContainerCreateError, ContainerStartError) as error:
                raise StepFailed(str(error)) from None
            finally:
                await self._runtime.remove(container_id)
                self._runtime.forget(container_id)

        runs = 1 if spec.on_init_failure is InitFailurePolicy.FAIL else INIT_RUN_LIMIT
        failure = None
        for run in range(runs):
            failure = await run_steps(spec.init_steps, run_in_container, report)
            if failure is None:
                return None
            if spec.on_init_failure is InitFailurePolicy.BACKOFF and run + 1 < runs:
                await asyncio.sleep(INIT_BACKOFF_SECONDS * 2**run)
        return failure

    async def _await_exit(self, execution: Execution, deadline: float | None = None) -> None:
        """Waits for the container to end, removes it, then records the outcome.

        At the deadline the container is stopped as a cancel would. A terminal execution
        has no container left; the exit file outlives the removal until the outcome is
        recorded, so a crash in between loses nothing.
        """
        container_id = execution.container_id
        waiting = asyncio.ensure_future(self._runtime.wait(container_id))
        try:
            timeout = None if deadline is None else max(0.0, deadline - _monotonic())
            done, _ = await asyncio.wait([waiting], timeout=timeout)
            if not done:
                self._deadline_passed.add(execution.id)
                await self._runtime.stop(container_id, self._grace_of(execution.id))
            exit_status = await waiting
        finally:
            waiting.cancel()
        await self._runtime.remove(container_id)
        self._finish(execution, exit_status)
        self._runtime.forget(container_id)

    def _finish(self, execution: Execution, exit_status: ExitStatus) -> None:
        code = exit_status.exit_code
        if execution.id in self._cancel_requested:
            self._record_cancelled(execution, exit_code=code)
        elif execution.id in self._deadline_passed:
            spec = self._specs.get(execution.id)
            message = _deadline_message(spec) if spec else "the deadline passed"
            self._fail(execution, FailureReason.DEADLINE_EXCEEDED, message, exit_code=code)
        elif exit_status.oom_killed:
            self._fail(
                execution,
                FailureReason.OOM_KILLED,
                "the process was killed by its memory limit",
                exit_code=code,
            )
        elif code == 0:
            self._record(execution, Status.COMPLETED, exit_code=0, finished_at=_now())
        else:
            self._fail(
                execution,
                FailureReason.EXIT_CODE,
                f"the process exited with code {code}",
                exit_code=code,
            )

    def _record_cancelled(self, execution: Execution, exit_code: int | None = None) -> Execution:
        return self._record(
            execution,
            Status.CANCELLED,
            exit_code=exit_code,
            message="cancelled on request",
            finished_at=_now(),
        )

    def _fail(
        self,
        execution: Execution,
        reason: FailureReason,
        message: str,
        exit_code: int | None = None,
    ) -> Execution:
        return self._record(
            execution,
            Status.FAILED,
            failure_reason=reason,
            message=message,
            exit_code=exit_code,
            finished_at=_now(),
        )

    def _record(self, execution: Execution, status: Status, **changes: Any) -> Execution:
        """Checks the transition against the table, writes it, and publishes the event."""
        check_transition(execution.status, status)
        updated = replace(execution, status=status, **changes)
        try:
            event = self._store.transition(execution.status, updated)
        except StaleTransition:
            log.warning("execution %s: dropped late transition to %s", execution.id, status.value)
            return self._store.get_execution(execution.id)
        self._bus.publish(event)
        return updated
