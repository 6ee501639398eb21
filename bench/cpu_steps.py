"""The thread CPU time an agent spends in each of its per-job steps, for
`python -m bench.agent_cpu --steps`.

The agent runs with the step functions below wrapped: each call adds the CPU time of the
thread that made it (time.thread_time: user and system, its own thread only) to the step's
total. On SIGUSR2 the agent writes the totals to a file, whole (written aside, then
renamed), so that the bench can take them before and after its measured rounds. Only
plain functions are wrapped: a coroutine's time would be spread over the loop's turns.

A step's figure includes the steps under it (their indentation in STEPS); what no step
covers (asyncio and gRPC on the loop thread, the pool's hand-offs in the workers) is the
thread's total less its top-level steps. Each wrapped call costs about two clock reads.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SNAPSHOT_SIGNAL = signal.SIGUSR2
SNAPSHOT_SECONDS = 10.0


@dataclass(frozen=True)
class Step:
    """A function of the agent to time: `target` is "module:Qualified.name"; `depth` is
    its place in the tree of steps (0: called by the thread's own loop or pool)."""

    thread: str
    depth: int
    target: str

    @property
    def name(self) -> str:
        """The function's qualified name."""
        return self.target.partition(":")[2]


# The thread kinds bench.agent_cpu tells apart: the loop's, and all others (the worker
# pool, gRPC's own threads).
WORKER, LOOP = "other threads (worker pool, gRPC)", "event loop thread"
STEPS = (
    Step(WORKER, 0, "agent.runtime.manager:ContainerManager._create"),
    Step(WORKER, 1, "agent.runtime.manager:ContainerManager._prepare_bundle"),
    Step(WORKER, 2, "agent.runtime.bundle:resolve_process"),
    Step(WORKER, 2, "agent.runtime.manager:ContainerManager._image_view"),
    Step(WORKER, 2, "agent.runtime.bundle:mount_overlay"),
    Step(WORKER, 2, "agent.runtime.bundle:build_config"),
    Step(WORKER, 1, "agent.runtime.monitor:ConmonMonitor.create_here"),
    Step(WORKER, 0, "agent.runtime.manager:ContainerManager._start_here"),
    Step(WORKER, 0, "agent.runtime.manager:ContainerManager._remove"),
    Step(WORKER, 1, "agent.runtime.oci:OciRuntime.delete_here"),
    Step(WORKER, 1, "agent.runtime.manager:ContainerManager._remove_bundle"),
    Step(WORKER, 2, "agent.runtime.bundle:unmount_bundle"),
    Step(WORKER, 1, "agent.runtime.monitor:ConmonMonitor.forget"),
    Step(LOOP, 0, "agent.executor.recorder:Recorder.transition"),
    Step(LOOP, 1, "agent.store:Store.transition"),
    Step(LOOP, 0, "agent.executor.recorder:Recorder.event"),
    Step(LOOP, 1, "agent.store:Store.append_event"),
    Step(LOOP, 0, "agent.store:Store.get_job"),
    Step(LOOP, 0, "agent.store:Store.insert_execution"),
    Step(LOOP, 0, "agent.api.convert:event_to_proto"),
    Step(LOOP, 0, "agent.runtime.manager:oom_kill_count"),
)


class StepClock:
    """CPU seconds and calls of each step, added up by the wrapped functions' threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.totals: dict[str, list[float]] = {step.target: [0.0, 0] for step in STEPS}

    def wrap(self, target: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function`, adding each call's thread CPU time to `target`'s total."""

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.thread_time() - started
                with self._lock:
                    total = self.totals[target]
                    total[0] += spent
                    total[1] += 1

        return timed

    def install(self) -> None:
        """Wraps every step's function where its callers look it up."""
        for step in STEPS:
            module_name, _, qualified = step.target.partition(":")
            owner: Any = importlib.import_module(module_name)
            *parents, attribute = qualified.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            setattr(owner, attribute, self.wrap(step.target, getattr(owner, attribute)))

    def write(self, output: Path) -> None:
        """Writes the totals to `output`, whole."""
        with self._lock:
            document = {target: list(total) for target, total in self.totals.items()}
        partial = output.with_name(output.name + ".new")
        partial.write_text(json.dumps(document))
        partial.replace(output)


def serve_timed(output: Path, argv: list[str]) -> int:
    """Runs `agent ARGV` with its steps timed; SIGUSR2 writes the totals to `output`."""
    from agent.cli import main

    clock = StepClock()
    clock.install()
    signal.signal(SNAPSHOT_SIGNAL, lambda _number, _frame: clock.write(output))
    return main(argv)


def snapshot(pid: int, output: Path) -> dict[str, list[float]]:
    """Asks the timed agent `pid` for its totals and returns them once written."""
    output.unlink(missing_ok=True)
    os.kill(pid, SNAPSHOT_SIGNAL)
    deadline = time.monotonic() + SNAPSHOT_SECONDS
    while not output.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the agent wrote no step totals to {output}")
        time.sleep(0.01)
    totals: dict[str, list[float]] = json.loads(output.read_text())
    return totals


def report(
    before: dict[str, list[float]],
    after: dict[str, list[float]],
    thread_ms_per_job: dict[str, float],
    jobs: int,
) -> list[str]:
    """Lines of the table: each step's CPU ms and calls per job, and per thread kind what
    no top-level step covers."""
    lines = []
    for thread in (LOOP, WORKER):
        total = thread_ms_per_job[thread]
        lines.append(f"{thread}: {total:.2f} ms per job")
        covered = 0.0
        for step in (step for step in STEPS if step.thread == thread):
            seconds = after[step.target][0] - before[step.target][0]
            calls = after[step.target][1] - before[step.target][1]
            milliseconds = 1000 * seconds / jobs
            if step.depth == 0:
                covered += milliseconds
            indent = "  " * (step.depth + 1)
            lines.append(f"{indent}{step.name}: {milliseconds:.3f} ms ({calls / jobs:g} calls)")
        lines.append(f"  not in a step above: {total - covered:.2f} ms")
    return lines
