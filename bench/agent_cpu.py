"""The agent process's own CPU time per job on a P2-like run: `true` jobs at concurrency 8,
triggered at once and followed on one event stream (bench.throughput's agent round), after
a warm-up round. Prints user and system time per job, the split between the event loop's
thread and the others (worker threads: bundles, spawns, removals), and the threads' context
switches per job (each hand-off of the GIL between threads is one or two).

With --steps the agent's per-job steps are timed (bench.cpu_steps): the CPU time of each,
in ms per job, and what no step covers.

With --profile FILE the agent runs under pyinstrument (the bench extra), which samples the
event loop thread's CPU time rather than wall time; FILE gets the text profile and
FILE.pyisession the session (`pyinstrument --load FILE.pyisession` renders it anew).

    python -m bench.agent_cpu [--runtime youki] [--jobs 200] [--rounds 2] [--steps]
        [--profile FILE]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from unittest import mock

from bench import cpu_steps
from bench.common import removal_watch, scratch_agent
from bench.throughput import agent_round
from tests.e2e.harness import AgentProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SERVE_PROFILED = "--serve-profiled"
SERVE_TIMED = "--serve-timed"


def thread_ticks(pid: int) -> dict[int, tuple[int, int]]:
    """User and system clock ticks of each live thread of a process, by thread id."""
    ticks = {}
    for name in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{name}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue
        ticks[int(name)] = int(fields[11]), int(fields[12])
    return ticks


def thread_switches(pid: int) -> dict[int, tuple[int, int]]:
    """Voluntary and involuntary context switches of each live thread of a process, by
    thread id: a thread that waits (for the GIL, a lock, a child, I/O) switches
    voluntarily, one that is preempted involuntarily."""
    switches = {}
    for name in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{name}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        voluntary = int(fields["voluntary_ctxt_switches"])
        switches[int(name)] = (voluntary, int(fields["nonvoluntary_ctxt_switches"]))
    return switches


def switches_between(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]]
) -> tuple[int, int]:
    """The voluntary and involuntary switches that threads live at `after` made since
    `before` (a thread started in between counts from zero)."""
    voluntary = involuntary = 0
    for thread, (now_voluntary, now_involuntary) in after.items():
        then_voluntary, then_involuntary = before.get(thread, (0, 0))
        voluntary += now_voluntary - then_voluntary
        involuntary += now_involuntary - then_involuntary
    return voluntary, involuntary


def process_ticks(pid: int) -> tuple[int, int]:
    """User and system clock ticks of a process (all its threads, live or ended)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return int(fields[11]), int(fields[12])


def serve_profiled(output: Path, argv: list[str]) -> int:
    """Runs `agent ARGV` under pyinstrument, timed by the thread's CPU clock; writes the
    profile when the agent returns."""
    pyinstrument = importlib.import_module("pyinstrument")
    sampler = importlib.import_module("pyinstrument.stack_sampler")
    sampler.get_stack_sampler().timer_func = time.thread_time
    from agent.cli import main

    profiler = pyinstrument.Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    try:
        return main(argv)
    finally:
        profiler.stop()
        profiler.last_session.save(f"{output}.pyisession")
        output.write_text(profiler.output_text(unicode=False, color=False))


def main() -> int:
    """Runs the measurement; returns the exit status."""
    if len(sys.argv) > 2 and sys.argv[1] == SERVE_PROFILED:
        return serve_profiled(Path(sys.argv[2]), sys.argv[3:])
    if len(sys.argv) > 2 and sys.argv[1] == SERVE_TIMED:
        return cpu_steps.serve_timed(Path(sys.argv[2]), sys.argv[3:])
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--steps", action="store_true")
    choice.add_argument("--profile", type=Path)
    args = parser.parse_args()
    plain = AgentProcess.python
    scratch = tempfile.TemporaryDirectory(prefix="agent-cpu-")
    totals = Path(scratch.name) / "steps.json"

    def python(agent: AgentProcess, *argv: str) -> list[str]:
        if argv[:1] != ("serve",) or not (args.profile or args.steps):
            return plain(agent, *argv)
        if args.steps:
            return [sys.executable, "-m", "bench.agent_cpu", SERVE_TIMED, str(totals), *argv]
        profile = str(args.profile.resolve())
        return [sys.executable, "-m", "bench.agent_cpu", SERVE_PROFILED, profile, *argv]

    # Room for every job of a round in Pending at once.
    agent_args = ("--max-concurrent", str(args.concurrency), "--max-pending-per-job", "100000")
    with (
        scratch,
        mock.patch.object(AgentProcess, "python", python),
        scratch_agent(args.runtime, *agent_args) as bench,
        removal_watch(bench) as removals,
    ):
        assert bench.agent.process is not None
        pid = bench.agent.process.pid
        bench.register("bench-true")
        agent_round(bench, 2 * args.concurrency, removals)
        steps_before = cpu_steps.snapshot(pid, totals) if args.steps else {}
        (user, system), threads = process_ticks(pid), thread_ticks(pid)
        switches = thread_switches(pid)
        load = os.getloadavg()[0]
        # To the last container's removal: the agent's CPU for a job includes removing it.
        seconds = sum(agent_round(bench, args.jobs, removals)[1] for _ in range(args.rounds))
        (user_after, system_after), threads_after = process_ticks(pid), thread_ticks(pid)
        switches_after = thread_switches(pid)
        steps_after = cpu_steps.snapshot(pid, totals) if args.steps else {}
    jobs: int = args.jobs * args.rounds

    def per_job(ticks: int) -> float:
        return round(1000 * ticks / CLOCK_TICKS / jobs, 2)

    # Each thread kind's user and system ticks ("loop user", "other system", ...).
    split: Counter[str] = Counter()
    for thread, (thread_user, thread_system) in threads_after.items():
        kind = "loop" if thread == pid else "other"
        user_then, system_then = threads.get(thread, (0, 0))
        split[f"{kind} user"] += thread_user - user_then
        split[f"{kind} system"] += thread_system - system_then

    def thread_kind(kind: str) -> str:
        user_ms, system_ms = per_job(split[f"{kind} user"]), per_job(split[f"{kind} system"])
        return f"{round(user_ms + system_ms, 2)} (user {user_ms}, system {system_ms})"

    print(
        f"{jobs} jobs, {jobs / seconds:.1f} jobs/s, load average {load:.1f}: agent CPU "
        f"{per_job(user_after - user + system_after - system)} ms/job (user "
        f"{per_job(user_after - user)}, system {per_job(system_after - system)}); live "
        f"threads: event loop {thread_kind('loop')}, others {thread_kind('other')}"
    )
    voluntary, involuntary = switches_between(switches, switches_after)
    print(
        f"context switches of the live threads per job: {voluntary / jobs:.1f} voluntary, "
        f"{involuntary / jobs:.1f} involuntary"
    )
    if args.steps:
        threads_ms = {
            cpu_steps.LOOP: per_job(split["loop user"] + split["loop system"]),
            cpu_steps.WORKER: per_job(split["other user"] + split["other system"]),
        }
        print("\n".join(cpu_steps.report(steps_before, steps_after, threads_ms, jobs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
