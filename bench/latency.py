"""P1: TriggerJob to terminal event for a `true` job, against the raw runtime's `run`.

Each round runs the agent path and the raw runtime (`<runtime> run` of a bundle with the
same image rootfs and the same config) back to back, alternating which goes first.

    python -m bench.latency [--runtime youki] [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics

from bench.common import RawRunHung, agent_run_ms, raw_run_ms, report, scratch_agent


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    with scratch_agent(args.runtime) as bench:
        bench.register("bench-true")
        bundle = bench.raw_bundle(bench.rootfs())
        state = bench.raw_state
        agent_ms: list[float] = []
        raw_ms: list[float] = []
        hangs = 0
        index = 0
        while len(agent_ms) < args.runs:
            raw = (args.runtime, state, bundle, f"raw-{index}")
            try:
                if index % 2 == 0:
                    agent_time = agent_run_ms(bench.client, "bench-true")
                    raw_time = raw_run_ms(*raw)
                else:
                    raw_time = raw_run_ms(*raw)
                    agent_time = agent_run_ms(bench.client, "bench-true")
            except RawRunHung:
                hangs += 1  # the pair is left out, and run again
                continue
            finally:
                index += 1
            if index > args.warmup:
                agent_ms.append(agent_time)
                raw_ms.append(raw_time)
    report(
        "P1",
        f"P1 trigger-to-terminal of a `true` job, {args.runtime}, n={args.runs}",
        statistics.median(agent_ms),
        statistics.median(raw_ms),
        "ms",
        args.runs,
        f"{args.runtime} run of the same bundle",
        agent_ms,
        raw_ms,
        runtime=args.runtime,
        raw_hangs=hangs,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
