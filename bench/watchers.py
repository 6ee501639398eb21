"""P7: 1,000 concurrent WatchEvents streams: the delay from a transition (the time the
agent recorded it) to its arrival on every stream, p99.

A watching process holds the streams; once all are in place, jobs run one after another
and every stream times the arrival of every event. The watcher is bench/watchload, a Go
client (`make bench` builds it), so that the 1,000 streams take little of the CPU the agent
runs on.

The baseline, in the same run: a bare grpc.aio server (bench/bare_server.py) hands the same
events, at the same moments relative to each other and stamped with the moment each was
due, to the same 1,000 streams, from one asyncio.Queue per stream. It is what grpc.aio
alone costs to fan those events out on this machine. Rounds alternate (agent, bare, bare,
agent, ...); each side's p99 is over all its rounds, and is also given per transition.

    python -m bench.watchers [--runtime youki] [--streams 1000] [--jobs 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc

from bench.bare_server import write_replay
from bench.common import Bench, report_value, scratch_agent
from tests.e2e.harness import REPO, free_port

WATCHLOAD = REPO / ".tools" / "bin" / "watchload"
TRANSITIONS = ("pending", "initializing", "running", "completed")  # each job's events, in order
EVENTS_PER_JOB = len(TRANSITIONS)


class Watchers:
    """bench/watchload holding `streams` WatchEvents streams on a server."""

    def __init__(self, target: str, streams: int, since: int, expected: int) -> None:
        if not WATCHLOAD.exists():
            raise SystemExit(f"bench: {WATCHLOAD} is missing: run `make bench ONLY=P7`")
        self.process = subprocess.Popen(
            [
                str(WATCHLOAD),
                "-target",
                target,
                "-streams",
                str(streams),
                "-since",
                str(since),
                "-expected",
                str(expected),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.process.kill()
            raise SystemExit("bench: watchload could not open its streams")

    def delays(self) -> list[float]:
        """Once every stream saw every event: each arrival's delay (ms)."""
        output, _ = self.process.communicate(timeout=120)
        if self.process.returncode != 0:
            raise SystemExit("bench: watchload failed")
        delays: list[float] = json.loads(output)
        return delays


def agent_round(bench: Bench, streams: int, jobs: int) -> tuple[list[float], int]:
    """Runs `jobs` jobs one after another under the watchers; the delays and the sequence
    the round started after."""
    since = bench.client.node_info().last_sequence
    watchers = Watchers(bench.agent.target, streams, since, EVENTS_PER_JOB * jobs)
    for _ in range(jobs):
        assert bench.client.wait(bench.client.trigger("bench-true").id).status == "completed"
        time.sleep(0.2)
    return watchers.delays(), since


def recorded_events(target: str, since: int, count: int) -> list[tuple[float, bytes]]:
    """The agent's next `count` events after `since` as it sent them: (seconds after the
    first, the message)."""
    events: list[tuple[float, bytes]] = []
    with grpc.insecure_channel(target) as channel:
        stream = service_grpc.JobServiceStub(channel).WatchEvents(
            service_pb.WatchEventsRequest(since_sequence=since)
        )
        for item in stream:
            if item.HasField("event"):
                events.append((item.event.time.ToNanoseconds() / 1e9, item.SerializeToString()))
                if len(events) == count:
                    break  # closing the channel ends the stream
    first = events[0][0]
    return [(moment - first, message) for moment, message in events]


def bare_round(replay: Path, streams: int, expected: int) -> list[float]:
    """The same events, fanned out by the bare server to the same watchers."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_server", str(port), "--replay", str(replay)],
        stdin=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert server.stdin is not None
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
        watchers = Watchers(f"127.0.0.1:{port}", streams, 0, expected)
        server.stdin.write("go\n")
        server.stdin.flush()
        return watchers.delays()
    finally:
        server.kill()
        server.wait()


def p99(delays: list[float]) -> float:
    """The 99th percentile (nearest rank)."""
    ordered = sorted(delays)
    return ordered[max(0, int(len(ordered) * 0.99) - 1)]


def p99_by_transition(delays: list[float]) -> dict[str, float]:
    """The p99 of each of a job's transitions. Every stream reports its arrivals in order,
    one job's four after another, so an arrival's place in its job is its index modulo four.
    The second of a pair that comes together (initializing after pending, completed after
    running) waits on every stream for the first one's write."""
    return {
        name: round(p99(delays[place::EVENTS_PER_JOB]), 2) for place, name in enumerate(TRANSITIONS)
    }


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    expected = EVENTS_PER_JOB * args.jobs
    agent_delays: list[float] = []
    bare_delays: list[float] = []
    # One watcher process opens every stream: past the agent's per-caller (and node)
    # limit of streams, which guard against one caller taking them all.
    room = str(args.streams + 64)
    limits = ("--max-streams-per-caller", room, "--max-streams", room)
    with scratch_agent(args.runtime, *limits) as bench:
        bench.register("bench-true")
        replay = bench.root / "replay.json"
        for round_ in range(args.rounds):
            for side in ("agent", "bare") if round_ % 2 == 0 else ("bare", "agent"):
                if side == "agent":
                    delays, since = agent_round(bench, args.streams, args.jobs)
                    agent_delays += delays
                    if not replay.exists():
                        write_replay(replay, recorded_events(bench.agent.target, since, expected))
                else:
                    bare_delays += bare_round(replay, args.streams, expected)
    for delays in (agent_delays, bare_delays):
        assert len(delays) == args.streams * expected * args.rounds, len(delays)
    value, baseline = p99(agent_delays), p99(bare_delays)
    report_value(
        "P7",
        f"P7 delay from a transition to its arrival on each of {args.streams} "
        f"WatchEvents streams, p99 of {len(agent_delays)} ({args.rounds} rounds "
        f"of {args.jobs} jobs)",
        value,
        "ms",
        len(agent_delays),
        {"agent": agent_delays, "bare grpc.aio fan-out": bare_delays},
        median_ms=round(statistics.median(agent_delays), 2),
        streams=args.streams,
        baseline_ms=round(baseline, 2),
        ratio=float(f"{value / baseline:.3g}"),
        baseline_median_ms=round(statistics.median(bare_delays), 2),
        p99_by_transition=p99_by_transition(agent_delays),
        baseline_p99_by_transition=p99_by_transition(bare_delays),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
