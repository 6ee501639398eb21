"""Supervised background work: the agent's long-lived tasks, kept running.

A task that fails (raises, or returns although it should run until stopped) is logged
with its traceback, counted, and started again after a backoff that doubles from one
second to thirty (and starts again from one second once a run lasted that long). A
*core* task is one the agent cannot do its work without (the cron scheduler): while one is
down the supervisor reports the node unhealthy, and healthy again once every core task
has run for a backoff's first delay without failing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Work = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Backoff:
    """Delays before restarts: `initial`, times `factor` after each failure, at most
    `maximum`; a run that lasted `maximum` seconds starts the series afresh."""

    initial: float = 1.0
    maximum: float = 30.0
    factor: float = 2.0

    def next(self, previous: float | None, ran_for: float) -> float:
        """The delay before a restart, given the one before the last restart (None: there
        was none) and how long the task ran this time."""
        if previous is None or ran_for >= self.maximum:
            return self.initial
        return min(previous * self.factor, self.maximum)


@dataclass
class _Task:
    name: str
    work: Work
    core: bool
    up: bool = True
    restarts: int = 0
    runner: asyncio.Task[None] | None = None


class Supervisor:
    """Runs long-lived tasks and restarts them when they fail.

    `on_restart(name)` is called at each restart (metrics); `on_health(healthy)` whenever
    whether every core task is up changes (the health service).

    Only the agent's long-lived tasks are supervised. An execution's own task, a stream's
    and a container monitor's end with what they serve, and their failure is that
    execution's (Failed, AGENT_ERROR) or that call's (INTERNAL with an error id).
    """

    def __init__(
        self,
        backoff: Backoff | None = None,
        on_restart: Callable[[str], None] | None = None,
        on_health: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.backoff = backoff or Backoff()
        self._on_restart = on_restart
        self._on_health = on_health
        self._tasks: dict[str, _Task] = {}
        self._reported = True
        self._health_lock = asyncio.Lock()
        self._stopping = False

    def start(self, name: str, work: Work, core: bool) -> None:
        """Starts `work()` as the task `name` and keeps it running until stop()."""
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        task = _Task(name, work, core)
        self._tasks[name] = task
        task.runner = asyncio.create_task(self._keep_running(task), name=f"supervised:{name}")

    @property
    def healthy(self) -> bool:
        """True while every core task is up."""
        return all(task.up for task in self._tasks.values() if task.core)

    def down(self) -> list[str]:
        """The tasks waiting to be restarted (or restarted and not yet settled)."""
        return [task.name for task in self._tasks.values() if not task.up]

    def restarts(self, name: str) -> int:
        """How many times the task `name` was restarted."""
        return self._tasks[name].restarts

    async def stop(self) -> None:
        """Cancels every task and waits until they ended."""
        self._stopping = True
        runners = [task.runner for task in self._tasks.values() if task.runner is not None]
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)

    async def _keep_running(self, task: _Task) -> None:
        loop = asyncio.get_running_loop()
        delay: float | None = None
        while True:
            started = loop.time()
            error: Exception | None = None
            try:
                await self._run_once(task)
            except Exception as failure:
                error = failure
            problem = (
                "failed" if error is not None else "ended, but it should run until the agent stops"
            )
            delay = self.backoff.next(delay, loop.time() - started)
            meanwhile = " (the node reports NOT_SERVING meanwhile)" if task.core else ""
            log.error(
                "background task %s %s; restarting it in %.3gs%s",
                *(task.name, problem, delay, meanwhile),
                exc_info=error,
            )
            await self._set_up(task, False)
            await asyncio.sleep(delay)
            task.restarts += 1
            if self._on_restart is not None:
                self._on_restart(task.name)

    async def _run_once(self, task: _Task) -> None:
        """Runs the work once; a task coming back from a failure is marked up once it ran
        for the backoff's first delay without failing."""
        work = asyncio.ensure_future(task.work())
        try:
            if not task.up:
                done, _ = await asyncio.wait({work}, timeout=self.backoff.initial)
                if not done:
                    log.info("background task %s runs again", task.name)
                    await self._set_up(task, True)
            await work
        except asyncio.CancelledError:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            # The work was cancelled by someone else: a failure like any other.
            raise RuntimeError(f"background task {task.name} was cancelled") from None

    async def _set_up(self, task: _Task, up: bool) -> None:
        task.up = up
        if not task.core or self._on_health is None:
            return
        async with self._health_lock:
            healthy = self.healthy
            if healthy != self._reported and not self._stopping:
                self._reported = healthy
                try:
                    await self._on_health(healthy)
                except Exception:
                    log.exception("reporting health (%s) failed", healthy)
