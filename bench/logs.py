"""P4: the logs of a 100 MB output to a client, against `cat` of the log file.

A job writes `--size-mb` of `--line-bytes` lines; then the whole log is read over
DownloadLogs (the stored file in chunks of whole records) and, in the same run, by `cat`
of the attempt's log file into a pipe this process reads, as a client receives it; once
more over StreamLogs (one message per parsed line), for the record. Clients are the
generated stubs, so that the figures are the agent's, not a wrapper's. All as megabytes of
the job's output per second.

`cat` to /dev/null is recorded too but is no baseline: the kernel splices to /dev/null
without copying, so it moves no bytes at all.

    python -m bench.logs [--runtime youki] [--size-mb 100] [--line-bytes 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path

import grpc
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc

from bench.common import report, scratch_agent


def cat_to_reader(log_file: Path) -> int:
    """`cat` of the file into a pipe read here a megabyte at a time; the bytes read."""
    with subprocess.Popen(["cat", str(log_file)], stdout=subprocess.PIPE) as cat:
        assert cat.stdout is not None
        received = 0
        while block := os.read(cat.stdout.fileno(), 1 << 20):
            received += len(block)
    assert cat.returncode == 0
    return received


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--line-bytes", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
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
        null_s: list[float] = []
        with grpc.insecure_channel(bench.agent.target) as channel:
            stub = service_grpc.JobServiceStub(channel)
            for _ in range(args.runs):
                started = time.perf_counter()
                download = service_pb.DownloadLogsRequest(execution_id=execution.id)
                received = sum(len(chunk.data) for chunk in stub.DownloadLogs(download))
                agent_s.append(time.perf_counter() - started)
                assert received == log_file.stat().st_size, (received, log_file.stat())
                started = time.perf_counter()
                assert cat_to_reader(log_file) == log_file.stat().st_size
                cat_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                subprocess.run(["cat", str(log_file)], check=True, stdout=subprocess.DEVNULL)
                null_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            request = service_pb.StreamLogsRequest(execution_id=execution.id)
            # A partial line (conmon's read ended mid-line) has no newline of its own.
            lines_payload = sum(len(item.message) + (not item.partial)
                                for item in stub.StreamLogs(request))  # fmt: skip
            lines_s = time.perf_counter() - started
            assert lines_payload == payload, (lines_payload, payload)
    megabytes = payload / 1e6
    report("P4", f"P4 DownloadLogs of a {args.size_mb} MB output ({args.line_bytes}-byte lines), "
           f"{args.runtime}, n={args.runs}", megabytes / statistics.median(agent_s),
           megabytes / statistics.median(cat_s), "MB/s", args.runs,
           "cat of the log file to a reader", [megabytes / s for s in agent_s],
           [megabytes / s for s in cat_s], line_bytes=args.line_bytes,
           stream_logs=round(megabytes / lines_s, 2),
           cat_to_dev_null=round(megabytes / statistics.median(null_s), 2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
