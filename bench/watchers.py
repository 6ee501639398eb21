"""P7: 1,000 concurrent WatchEvents streams: the delay from a transition (the time the
agent recorded it) to its arrival on every stream, p99.

A watching process holds the streams; once all are in place, jobs run one after another
and every stream times the arrival of every event. The watcher is bench/watchload, a Go
client (`make bench` builds it), so that the 1,000 streams take little of the CPU the agent
runs on; `--client python` uses `--workers` grpc.aio processes instead, which on a small
machine take more CPU than the agent and so inflate the figure.

    python -m bench.watchers [--runtime youki] [--streams 1000] [--client go|python]
                             [--workers 4] [--jobs 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import subprocess
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc

from bench.common import report_value, scratch_agent


def watch(target: str, streams: int, since: int, expected: int, pipe: Connection) -> None:
    """A worker: opens `streams` streams, says so, and sends back the delays it saw (ms)."""

    async def run() -> list[float]:
        delays: list[float] = []
        opened = 0
        ready = asyncio.Event()

        async def one(stub: service_grpc.JobServiceStub) -> None:
            nonlocal opened
            # The generated stubs are typed for the blocking API; this one is grpc.aio's.
            call: Any = stub.WatchEvents(service_pb.WatchEventsRequest(since_sequence=since))
            await call.initial_metadata()  # sent once the watch is in place
            opened += 1
            if opened == streams:
                ready.set()
            seen = 0
            async for item in call:
                if item.HasField("event"):
                    arrived = time.time()
                    delays.append((arrived - item.event.time.ToNanoseconds() / 1e9) * 1000)
                    seen += 1
                    if seen == expected:
                        call.cancel()
                        return

        async with grpc.aio.insecure_channel(target) as channel:
            stub = service_grpc.JobServiceStub(channel)
            tasks = [asyncio.create_task(one(stub)) for _ in range(streams)]
            await ready.wait()
            pipe.send("ready")
            await asyncio.wait_for(asyncio.gather(*tasks), 300)
        return delays

    pipe.send(asyncio.run(run()))


WATCHLOAD = Path(".tools/bin/watchload")


def watch_with_go(target: str, streams: int, since: int, expected: int) -> subprocess.Popen[str]:
    """Starts bench/watchload; returns once every stream is in place."""
    if not WATCHLOAD.exists():
        raise SystemExit(f"bench: {WATCHLOAD} is missing: run `make bench ONLY=P7`")
    process = subprocess.Popen(
        [str(WATCHLOAD), "-target", target, "-streams", str(streams), "-since", str(since),
         "-expected", str(expected)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--client", choices=("go", "python"), default="go")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=10)
    args = parser.parse_args()
    with scratch_agent(args.runtime) as bench:
        bench.register("bench-true")
        since = bench.client.node_info().last_sequence
        expected = 4 * args.jobs  # pending, initializing, running, completed
        pipes = []
        workers = []
        go_watcher = None
        if args.client == "go":
            streams = args.streams
            go_watcher = watch_with_go(bench.agent.target, streams, since, expected)
        else:
            streams = args.streams // args.workers * args.workers
            for _ in range(args.workers):
                ours, theirs = multiprocessing.Pipe()
                share = args.streams // args.workers
                worker = multiprocessing.Process(
                    target=watch, args=(bench.agent.target, share, since, expected, theirs)
                )
                worker.start()
                pipes.append(ours)
                workers.append(worker)
            for pipe in pipes:
                assert pipe.recv() == "ready"
        for _ in range(args.jobs):
            assert bench.client.wait(bench.client.trigger("bench-true").id).status == "completed"
            time.sleep(0.2)
        if go_watcher is not None:
            output, _ = go_watcher.communicate(timeout=120)
            delays: list[float] = json.loads(output)
        else:
            delays = [delay for pipe in pipes for delay in pipe.recv()]
            for worker in workers:
                worker.join(30)
    delays.sort()
    assert len(delays) == streams * expected, (len(delays), streams * expected)
    p99 = delays[int(len(delays) * 0.99) - 1]
    report_value("P7", f"P7 delay from a transition to its arrival on each of {streams} "
                 f"WatchEvents streams ({args.client} client), p99 of {len(delays)}", p99, "ms",
                 len(delays), {"arrival delay (ms)": delays},
                 median_ms=round(statistics.median(delays), 2), streams=streams,
                 client=args.client)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
