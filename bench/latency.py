"""P1: TriggerJob to the end of a `true` job, against the raw runtime's `run`.

Each round runs the agent path and the raw runtime (`<runtime> run` of a bundle with the
same image rootfs and the same config) back to back, alternating which goes first.

The agent's side has two figures: to the terminal event on WatchExecution (what a
scheduler waits for) and to the container's removal (the moment the agent deleted its
writable layer, the last step after the runtime's `delete`; see bench.common.RemovalWatch).
`<runtime> run` includes its `delete`, so the ratio uses the second; the first is printed
beside it.

    python -m bench.latency [--runtime youki] [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics

from bench.common import (
    AgentRun,
    RawRunHung,
    agent_run,
    raw_run_ms,
    removal_watch,
    report,
    scratch_agent,
)


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    with scratch_agent(args.runtime) as bench, removal_watch(bench) as removals:
        bench.register("bench-true")
        bundle = bench.raw_bundle(bench.rootfs())
        state = bench.raw_state
        agent_runs: list[AgentRun] = []
        raw_ms: list[float] = []
        hangs = 0
        index = 0
        while len(agent_runs) < args.runs:
            raw = (args.runtime, state, bundle, f"raw-{index}")
            try:
                if index % 2 == 0:
                    agent_time = agent_run(bench.client, "bench-true", removals)
                    raw_time = raw_run_ms(*raw)
                else:
                    raw_time = raw_run_ms(*raw)
                    agent_time = agent_run(bench.client, "bench-true", removals)
            except RawRunHung:
                hangs += 1  # the pair is left out, and run again
                continue
            finally:
                index += 1
            if index > args.warmup:
                agent_runs.append(agent_time)
                raw_ms.append(raw_time)
    removed_ms = [run.removed_ms for run in agent_runs]
    terminal_ms = [run.terminal_ms for run in agent_runs]
    report(
        "P1",
        f"P1 trigger to the container's removal of a `true` job, {args.runtime}, n={args.runs}",
        statistics.median(removed_ms),
        statistics.median(raw_ms),
        "ms",
        args.runs,
        f"{args.runtime} run of the same bundle",
        removed_ms,
        raw_ms,
        beside={"agent_to_terminal": ("to the terminal event", statistics.median(terminal_ms))},
        runtime=args.runtime,
        raw_hangs=hangs,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
