"""P5: unary GetExecution requests per second under ghz, against a bare grpc.aio server
answering the same message (bench/bare_server.py), in the same run, alternating. The figure
held to the bar asks for a finished execution; beside it, one that is still running.

    python -m bench.unary [--runtime youki] [--requests 20000] [--concurrency 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import timedelta

import grpc
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc

from bench.common import Bench, report, scratch_agent
from tests.e2e.harness import REPO, free_port, wait_until

GHZ = REPO / ".tools" / "bin" / "ghz"


def ghz_rps(target: str, execution_id: str, requests: int, concurrency: int) -> float:
    """Requests per second that ghz measured for GetExecution."""
    result = subprocess.run(
        [
            str(GHZ),
            "--insecure",
            "--proto",
            str(REPO / "protos/jobagent/v1/job_service.proto"),
            "--import-paths",
            str(REPO / "protos"),
            "--call",
            "jobagent.v1.JobService/GetExecution",
            "-d",
            json.dumps({"id": execution_id}),
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            "--format",
            "json",
            target,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    summary = json.loads(result.stdout)
    assert not summary.get("errorDistribution"), summary.get("errorDistribution")
    return float(summary["rps"])


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not GHZ.exists() and shutil.which("ghz") is None:
        raise SystemExit("bench: ghz is missing: `make bench` installs it")
    with scratch_agent(args.runtime) as bench:
        bench.register("bench-true")
        execution = bench.client.wait(bench.client.trigger("bench-true").id)
        running = _running_execution(bench)
        with grpc.insecure_channel(bench.agent.target) as channel:
            answer = service_grpc.JobServiceStub(channel).GetExecution(
                service_pb.GetExecutionRequest(id=execution.id)
            )
        message = bench.root / "answer.bin"
        message.write_bytes(answer.SerializeToString())
        port = free_port()
        bare = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_server", str(port), "--answer", str(message)],
            cwd=REPO,
        )
        try:
            wait_until(lambda: _answers(f"127.0.0.1:{port}", execution.id), 20, "the bare server")
            agent_rps: list[float] = []
            running_rps: list[float] = []
            bare_rps: list[float] = []
            sides = [
                (agent_rps, bench.agent.target, execution.id),
                (running_rps, bench.agent.target, running),
                (bare_rps, f"127.0.0.1:{port}", execution.id),
            ]
            for round_ in range(args.rounds):
                for samples, target, wanted in sides if round_ % 2 == 0 else sides[::-1]:
                    samples.append(ghz_rps(target, wanted, args.requests, args.concurrency))
                    time.sleep(0.5)
        finally:
            bare.kill()
            bare.wait()
            bench.client.cancel(running, timedelta(0))
    report(
        "P5",
        f"P5 unary GetExecution under ghz (c={args.concurrency}, "
        f"n={args.requests}), {args.rounds} rounds",
        statistics.median(agent_rps),
        statistics.median(bare_rps),
        "req/s",
        args.rounds,
        "bare grpc.aio server, same message",
        agent_rps,
        bare_rps,
        beside={
            "agent_running": (
                "an execution still running",
                statistics.median(running_rps),
            )
        },
    )
    return 0


def _running_execution(bench: Bench) -> str:
    """The id of an execution of a job that sleeps, once it runs."""
    bench.client.register(
        "version: v1\ndeployment: bench\nservices:\n  bench-sleep:\n    rtype: job\n"
        "    image: {name: 'busybox:latest', pull_policy: never}\n"
        "    command: {entrypoint: [/bin/sleep, '3600']}\n",
        replace=True,
    )
    execution_id = bench.client.trigger("bench-sleep").id
    wait_until(
        lambda: bench.client.get_execution(execution_id).status == "running", 30, "a running job"
    )
    return execution_id


def _answers(target: str, execution_id: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        try:
            service_grpc.JobServiceStub(channel).GetExecution(
                service_pb.GetExecutionRequest(id=execution_id), timeout=1
            )
        except grpc.RpcError:
            return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
