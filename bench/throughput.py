"""P2: jobs per second for 200 `true` jobs at concurrency 8, against the raw runtime
running the same bundle in 8 parallel loops; both as jobs over wall-clock seconds. The
agent's side is driven as a scheduler drives it: triggers, then one WatchEvents stream
followed until every execution has ended.

The agent's side has two figures: its jobs over the seconds to the last terminal event
(what a scheduler waits for) and over the seconds to the last container's removal (see
bench.common.RemovalWatch). Each raw run includes its `delete`, so the ratio uses the
second; the first is printed beside it. A round ends once every container is removed, so
no removal runs on into the next round.

The pair is measured `--rounds` times, the order alternating (agent first, then the raw
runtime first, ...), and each side's figure is its jobs over its seconds in all rounds: a
machine that speeds up or slows down during the run weighs on both sides alike.

Both sides keep every CPU busy, so each one's rate is the machine's CPUs over the CPU time
one job costs; the bench also prints that cost (the whole machine's busy time per job, and
the agent process's own share), which says where the ratio comes from.

    python -m bench.throughput [--runtime youki] [--jobs 200] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from jobagent_client.models import ExecutionEvent

from bench.common import (
    Bench,
    RawRunHung,
    RemovalWatch,
    container_of,
    raw_run_ms,
    removal_watch,
    report,
    scratch_agent,
)

TERMINAL = {"completed", "failed", "cancelled"}
Result = TypeVar("Result")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the machine has spent on anything but idling and waiting for I/O."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of one process (all its threads)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds spent by the whole machine during measured rounds, and by one process
    of it when given its pid."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self.machine = 0.0
        self.process = 0.0

    def measure(self, run: Callable[..., Result], *args: Any) -> Result:
        """Runs a round, `run(*args)`, and adds what it cost; returns what it returned."""
        machine, process = machine_busy_seconds(), self._process_seconds()
        result = run(*args)
        self.machine += machine_busy_seconds() - machine
        self.process += self._process_seconds() - process
        return result

    def _process_seconds(self) -> float:
        return 0.0 if self.pid is None else process_cpu_seconds(self.pid)


def agent_round(bench: Bench, jobs: int, removals: RemovalWatch) -> tuple[float, float]:
    """Seconds for the agent to run `jobs` executions, triggered at once and followed on
    the node's event stream (one stream, not one per execution): to the last terminal
    event, and to the last container's removal."""
    since = bench.client.node_info().last_sequence
    started = time.perf_counter()
    executions = {bench.client.trigger("bench-true").id for _ in range(jobs)}
    finals: dict[str, str] = {}
    for item in bench.client.watch_events(since, job_name="bench-true"):
        if not isinstance(item, ExecutionEvent) or item.execution.status not in TERMINAL:
            continue
        finals[item.execution.id] = item.execution.status
        if finals.keys() >= executions:
            break
    terminal = time.perf_counter() - started
    assert set(finals.values()) == {"completed"}, finals
    removed = removals.last_removed_at(map(container_of, executions)) - started
    return terminal, removed


def raw_round(
    runtime: str, state: Path, bundles: list[Path], runs: int, tag: str, hangs: list[str]
) -> float:
    """Seconds for `len(bundles)` loops of `<runtime> run` to do `runs` runs each."""

    def loop(worker: int) -> None:
        for index in range(runs):
            try:
                raw_run_ms(runtime, state, bundles[worker], f"raw-{tag}-{worker}-{index}")
            except RawRunHung as hung:
                hangs.append(str(hung))

    started = time.perf_counter()
    with ThreadPoolExecutor(len(bundles)) as pool:
        list(pool.map(loop, range(len(bundles))))
    return time.perf_counter() - started


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs = args.jobs // args.concurrency
    # (to the last terminal event, to the last removal) of each agent round.
    agent_seconds: list[tuple[float, float]] = []
    # (runs completed, seconds) of each raw round.
    raw_rounds: list[tuple[int, float]] = []
    hangs: list[str] = []
    with (
        scratch_agent(
            args.runtime,
            "--max-concurrent",
            str(args.concurrency),
            # A round's triggers all come at once: past the agent's default per-job bound
            # of Pending executions.
            "--max-pending-per-job",
            str(args.jobs),
        ) as bench,
        removal_watch(bench) as removals,
    ):
        assert bench.agent.process is not None
        agent_cpu, raw_cpu = CpuMeter(bench.agent.process.pid), CpuMeter()
        bench.register("bench-true")
        bundles = [bench.raw_bundle(bench.rootfs(), f"raw-{w}") for w in range(args.concurrency)]
        for number in range(args.rounds):
            for side in ("agent", "raw") if number % 2 == 0 else ("raw", "agent"):
                if side == "agent":
                    agent_seconds.append(agent_cpu.measure(agent_round, bench, args.jobs, removals))
                else:
                    hung_before = len(hangs)
                    seconds = raw_cpu.measure(
                        raw_round, args.runtime, bench.raw_state, bundles, runs, str(number), hangs
                    )
                    completed = runs * args.concurrency - (len(hangs) - hung_before)
                    raw_rounds.append((completed, seconds))
    raw_completed = sum(completed for completed, _ in raw_rounds)
    raw_total = sum(seconds for _, seconds in raw_rounds)
    agent_jobs = args.jobs * args.rounds
    cpu_per_job = {
        "agent_side_cpu_ms_per_job": round(1000 * agent_cpu.machine / agent_jobs, 2),
        "agent_process_cpu_ms_per_job": round(1000 * agent_cpu.process / agent_jobs, 2),
        "raw_side_cpu_ms_per_job": round(1000 * raw_cpu.machine / max(raw_completed, 1), 2),
    }
    print(
        "CPU time per job, the whole machine's: agent side "
        f"{cpu_per_job['agent_side_cpu_ms_per_job']} ms (of which the agent process "
        f"{cpu_per_job['agent_process_cpu_ms_per_job']} ms), raw side "
        f"{cpu_per_job['raw_side_cpu_ms_per_job']} ms"
    )
    to_terminal = agent_jobs / sum(terminal for terminal, _ in agent_seconds)
    report(
        "P2",
        f"P2 throughput of `true` jobs at concurrency {args.concurrency} to their "
        f"containers' removal, {args.runtime}, {args.rounds} rounds of {args.jobs} jobs",
        agent_jobs / sum(removed for _, removed in agent_seconds),
        raw_completed / raw_total,
        "jobs/s",
        agent_jobs,
        f"{args.concurrency} loops of {args.runtime} run",
        [args.jobs / removed for _, removed in agent_seconds],
        [completed / seconds for completed, seconds in raw_rounds],
        beside={"agent_to_terminal": ("to the terminal events", to_terminal)},
        runtime=args.runtime,
        rounds=args.rounds,
        raw_hangs=len(hangs),
        **cpu_per_job,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
