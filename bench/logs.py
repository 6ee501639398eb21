"""P4: the logs of a 100 MB output to a client, against `cat` of the log file.

A job writes `--size-mb` of `--line-bytes` lines; then the whole log is read over
StreamLogBatches (StreamLogs' lines, many per message) into a client that counts the lines
and their bytes and, in the same run, by `cat` of the attempt's log file into a pipe this
process reads, as a client receives it: P4, in megabytes of the log file per second.
P4b is DownloadLogs (the stored file in chunks of whole records) against the same `cat`.
The old one-line-per-message StreamLogs is recorded beside them. Clients are the generated
stubs, so that the figures are the agent's, not a wrapper's.

Then `jobctl logs` of a log of about 10.5 MiB (185,000 lines) to /dev/null, as a person
runs it: the whole command's time, start-up included.

`cat` to /dev/null is recorded too but is no baseline: the kernel splices to /dev/null
without copying, so it moves no bytes at all.

    python -m bench.logs [--runtime youki] [--size-mb 100] [--line-bytes 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc

from bench.common import Bench, report, report_value, scratch_agent

# What `jobctl logs` is timed on: the stored log of a 200,000-line job under the old cap.
JOBCTL_LINES = 185_000
JOBCTL_LINE = "jobctl line of some text"


def cat_to_reader(log_file: Path) -> int:
    """`cat` of the file into a pipe read here a megabyte at a time; the bytes read."""
    with subprocess.Popen(["cat", str(log_file)], stdout=subprocess.PIPE) as cat:
        assert cat.stdout is not None
        received = 0
        while block := os.read(cat.stdout.fileno(), 1 << 20):
            received += len(block)
    assert cat.returncode == 0
    return received


def run_job(bench: Bench, name: str, lines: int, line: str, cap_mb: int) -> Path:
    """Runs a job that prints `lines` copies of `line`; returns its log file."""
    bench.client.register(
        f"version: v1\ndeployment: bench\nservices:\n  {name}:\n    rtype: job\n"
        "    image: {name: busybox:latest, pull_policy: never}\n"
        f"    max_log_size: {cap_mb}Mi\n"
        # awk writes exactly the payload; a `yes | head` pipe would rely on SIGPIPE,
        # which youki's containers start with ignored.
        f"    command: {{entrypoint: [/bin/awk, 'BEGIN {{ for (i = 0; i < {lines}; i++) "
        f'print "{line}" }}\']}}\n',
        replace=True,
    )
    execution = bench.client.wait(bench.client.trigger(name).id)
    assert execution.status == "completed", execution.message
    return bench.agent.data_dir / "logs" / execution.id / "1.log"


def timed(action: Callable[[], object]) -> float:
    """Seconds `action` takes."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


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
    with scratch_agent(args.runtime) as bench:
        log_file = run_job(bench, "chatty", lines, "x" * (args.line_bytes - 1), 2 * args.size_mb)
        execution_id = log_file.parent.name
        size = log_file.stat().st_size
        batches_s: list[float] = []
        download_s: list[float] = []
        cat_s: list[float] = []
        null_s: list[float] = []
        with grpc.insecure_channel(bench.agent.target) as channel:
            stub = service_grpc.JobServiceStub(channel)

            def count_lines() -> None:
                request = service_pb.StreamLogBatchesRequest(execution_id=execution_id)
                counted = received = 0
                for batch in stub.StreamLogBatches(request):
                    # A fragment (conmon's read ended mid-line) has no newline of its own.
                    full = len(batch.messages) - len(batch.partial_lines)
                    counted += full
                    received += sum(map(len, batch.messages)) + full
                assert (counted, received) == (lines, payload), (counted, received)

            def download() -> None:
                request = service_pb.DownloadLogsRequest(execution_id=execution_id)
                assert sum(len(chunk.data) for chunk in stub.DownloadLogs(request)) == size

            def one_per_line() -> None:
                request = service_pb.StreamLogsRequest(execution_id=execution_id)
                received = sum(
                    len(line.message) + (not line.partial) for line in stub.StreamLogs(request)
                )
                assert received == payload, (received, payload)

            for _ in range(args.runs):
                batches_s.append(timed(count_lines))
                download_s.append(timed(download))
                cat_s.append(timed(lambda: cat_to_reader(log_file)))
                null_s.append(
                    timed(
                        lambda: subprocess.run(
                            ["cat", str(log_file)], check=True, stdout=subprocess.DEVNULL
                        )
                    )
                )
            lines_s = timed(one_per_line)
        small = run_job(bench, "jobctl", JOBCTL_LINES, JOBCTL_LINE, 16)
        small_mib = small.stat().st_size / 2**20
        jobctl = [str(Path(sys.executable).parent / "jobctl"), "--target", bench.agent.target]
        jobctl_s = [
            timed(
                lambda: subprocess.run(
                    [*jobctl, "logs", small.parent.name], check=True, stdout=subprocess.DEVNULL
                )
            )
            for _ in range(args.runs)
        ]
    file_mb = size / 1e6
    title = f"of a {args.size_mb} MB output ({args.line_bytes}-byte lines), {args.runtime}"
    report(
        "P4",
        f"P4 StreamLogBatches {title}, n={args.runs}",
        file_mb / statistics.median(batches_s),
        file_mb / statistics.median(cat_s),
        "MB/s",
        args.runs,
        "cat of the log file to a reader",
        [file_mb / s for s in batches_s],
        [file_mb / s for s in cat_s],
        line_bytes=args.line_bytes,
        log_file_mb=round(file_mb),
        stream_logs_one_per_line=round(file_mb / lines_s, 2),
        cat_to_dev_null=round(file_mb / statistics.median(null_s), 2),
    )
    report(
        "P4b",
        f"P4b DownloadLogs {title}, n={args.runs}",
        file_mb / statistics.median(download_s),
        file_mb / statistics.median(cat_s),
        "MB/s",
        args.runs,
        "cat of the log file to a reader",
        [file_mb / s for s in download_s],
        [file_mb / s for s in cat_s],
    )
    report_value(
        "P4c",
        f"P4c jobctl logs of a {small_mib:.1f} MiB log "
        f"({JOBCTL_LINES} lines) to /dev/null, n={args.runs}",
        statistics.median(jobctl_s),
        "s",
        args.runs,
        {"jobctl": jobctl_s},
        target="< 1 s",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
