"""P2: jobs per second for 200 `true` jobs at concurrency 8, against the raw runtime
running the same bundle in 8 parallel loops; both as jobs over wall-clock seconds. The
agent's side is driven as a scheduler drives it: triggers, then one WatchEvents stream
followed until every execution has ended.

    python -m bench.throughput [--runtime youki] [--jobs 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

from jobagent_client.models import ExecutionEvent

from bench.common import RawRunHung, raw_run_ms, report, scratch_agent

TERMINAL = {"completed", "failed", "cancelled"}


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with scratch_agent(args.runtime, "--max-concurrent", str(args.concurrency)) as bench:
        bench.register("bench-true")
        bundles = [bench.raw_bundle(bench.rootfs(), f"raw-{w}") for w in range(args.concurrency)]
        state = bench.raw_state

        # As a scheduler does: trigger, and follow the node's event stream (one stream, not
        # one per execution) until every execution has ended.
        since = bench.client.node_info().last_sequence
        started = time.perf_counter()
        executions = {bench.client.trigger("bench-true").id for _ in range(args.jobs)}
        finals: dict[str, str] = {}
        for item in bench.client.watch_events(since, job_name="bench-true"):
            if not isinstance(item, ExecutionEvent) or item.execution.status not in TERMINAL:
                continue
            finals[item.execution.id] = item.execution.status
            if finals.keys() >= executions:
                break
        agent_seconds = time.perf_counter() - started
        assert set(finals.values()) == {"completed"}, finals

        hangs: list[str] = []

        def loop(worker: int) -> None:
            for index in range(args.jobs // args.concurrency):
                try:
                    raw_run_ms(args.runtime, state, bundles[worker], f"raw-{worker}-{index}")
                except RawRunHung as hung:
                    hangs.append(str(hung))

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(loop, range(args.concurrency)))
        raw_seconds = time.perf_counter() - started
    completed = args.jobs // args.concurrency * args.concurrency - len(hangs)
    report("P2", f"P2 throughput of `true` jobs at concurrency {args.concurrency}, "
           f"{args.runtime}, {args.jobs} jobs", args.jobs / agent_seconds,
           completed / raw_seconds, "jobs/s", args.jobs,
           f"{args.concurrency} loops of {args.runtime} run", runtime=args.runtime,
           raw_hangs=len(hangs))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
