"""P4: StreamLogs of a 100 MB log to a client, against `cat` of the log file.

A job writes `--size-mb` of `--line-bytes` lines; then the whole log is read over
StreamLogs (the generated stub, so that the figure is the agent's, not a wrapper's) and,
in the same run, by `cat` of the attempt's log file. Both as payload megabytes per second.

    python -m bench.logs [--runtime youki] [--size-mb 100] [--line-bytes 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

import grpc
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc

from bench.common import report, scratch_agent


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--line-bytes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    lines = (args.size_mb << 20) // args.line_bytes
    payload = lines * args.line_bytes
    line = "x" * (args.line_bytes - 1)
    with scratch_agent(args.runtime) as bench:
        bench.client.register(
            "version: v1\ndeployment: bench\nservices:\n  chatty:\n    rtype: job\n"
            "    image: {name: busybox:latest, pull_policy: never}\n"
            f"    max_log_size: {2 * args.size_mb}Mi\n"
            # awk writes exactly the payload; a `yes | head` pipe would rely on SIGPIPE,
            # which youki's containers start with ignored.
            f"    command: {{entrypoint: [/bin/awk, 'BEGIN {{ for (i = 0; i < {lines}; i++) "
            f'print "{line}" }}\']}}\n',
            replace=True,
        )
        execution = bench.client.wait(bench.client.trigger("chatty").id)
        assert execution.status == "completed", execution.message
        log_file = bench.agent.data_dir / "logs" / execution.id / "1.log"
        agent_s: list[float] = []
        cat_s: list[float] = []
        with grpc.insecure_channel(bench.agent.target) as channel:
            stub = service_grpc.JobServiceStub(channel)
            for _ in range(args.runs):
                started = time.perf_counter()
                request = service_pb.StreamLogsRequest(execution_id=execution.id)
                # A partial line (conmon's read ended mid-line) has no newline of its own.
                received = sum(len(item.message) + (not item.partial)
                               for item in stub.StreamLogs(request))  # fmt: skip
                agent_s.append(time.perf_counter() - started)
                assert received == payload, (received, payload)
                started = time.perf_counter()
                subprocess.run(["cat", str(log_file)], check=True, stdout=subprocess.DEVNULL)
                cat_s.append(time.perf_counter() - started)
    megabytes = payload / 1e6
    report("P4", f"P4 StreamLogs of a {args.size_mb} MB log ({args.line_bytes}-byte lines), "
           f"{args.runtime}, n={args.runs}", megabytes / statistics.median(agent_s),
           megabytes / statistics.median(cat_s), "MB/s", args.runs,
           "cat of the log file", [megabytes / s for s in agent_s],
           [megabytes / s for s in cat_s], line_bytes=args.line_bytes)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
