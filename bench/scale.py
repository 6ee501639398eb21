"""P6: with 100,000 retained executions, the p99 latency of a ListExecutions page of 100,
and the agent's resident memory.

The store is filled before the agent starts (100 jobs, 1,000 finished executions each);
then pages are listed: the newest, the next ones by token, and with job and status filters.

    python -m bench.scale [--runtime youki] [--executions 100000] [--requests 500]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc
from jobagent.v1 import jobs_pb2 as pb

from agent.domain import (
    CommandSpec,
    Execution,
    ImageSpec,
    Job,
    JobSpec,
    Status,
    Trigger,
    TriggerKind,
)
from agent.executor.lifecycle import container_id_of
from agent.store import Store
from bench.common import report_value, scratch_agent

JOBS = 100


def fill(database: Path, executions: int) -> None:
    """Writes JOBS jobs and `executions` finished executions (with their events)."""
    store = Store(database)
    now = datetime.now(UTC)
    for index in range(JOBS):
        spec = JobSpec(
            f"scale-{index}", ImageSpec("busybox:latest"), command=CommandSpec(("/bin/true",))
        )
        store.put_job(Job(spec, now, now))
    for index in range(executions):
        execution_id = uuid.uuid4().hex
        created = now - timedelta(seconds=executions - index)
        failed = index % 10 == 0
        store.insert_execution(
            Execution(
                id=execution_id,
                job_name=f"scale-{index % JOBS}",
                status=Status.FAILED if failed else Status.COMPLETED,
                trigger=Trigger(TriggerKind.SCHEDULER),
                container_id=container_id_of(execution_id, 1),
                created_at=created,
                started_at=created,
                finished_at=created + timedelta(seconds=1),
                exit_code=1 if failed else 0,
                image="busybox:latest",
            )
        )
    store.close()


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    retain = ("--retention-per-job", str(args.executions), "--retention-max-age", "3650d")
    with scratch_agent(
        args.runtime, *retain, before_start=lambda data: fill(data / "agent.db", args.executions)
    ) as bench:
        latencies: list[float] = []
        rng = random.Random(7)
        with grpc.insecure_channel(bench.agent.target) as channel:
            stub = service_grpc.JobServiceStub(channel)
            token = ""
            for index in range(args.requests):
                request = service_pb.ListExecutionsRequest(page_size=100, page_token=token)
                if index % 3 == 1:
                    request = service_pb.ListExecutionsRequest(
                        page_size=100, job_name=f"scale-{rng.randrange(JOBS)}"
                    )
                elif index % 3 == 2:
                    request = service_pb.ListExecutionsRequest(
                        page_size=100, statuses=[pb.EXECUTION_STATUS_FAILED]
                    )
                started = time.perf_counter()
                response = stub.ListExecutions(request)
                latencies.append((time.perf_counter() - started) * 1000)
                assert len(response.executions) == 100
                if index % 3 == 0:
                    token = response.next_page_token
        assert bench.agent.process is not None
        memory = rss_mb(bench.agent.process.pid)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    report_value(
        "P6",
        f"P6 ListExecutions page of 100 among {args.executions} executions, p99 of {args.requests}",
        p99,
        "ms",
        args.requests,
        {"ListExecutions page of 100 (ms)": latencies},
        median_ms=round(statistics.median(latencies), 2),
        rss_mb=round(memory, 1),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
