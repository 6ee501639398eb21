"""The conformance scenario every client passes against a live agent (clients/CONFORMANCE.md).

python clients/python/examples/conformance.py [--expect-unauthenticated] [TARGET]

TARGET is host:port (127.0.0.1:50051 by default) or unix:/run/jobagent/jobagent.sock; the
bearer token, when the agent requires one, comes from JOBAGENT_TOKEN. With
--expect-unauthenticated it only checks that its first call is refused with UNAUTHENTICATED
(run it without the token the agent requires).
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime, timedelta

import grpc
from jobagent_client import ClientError, ExecutionEvent, JobAgentClient, LogLine

JOB = "conformance-python"
# Writes both streams and ends with a fragment (no newline).
LINES_SCRIPT = "echo one; echo two >&2; echo three; echo four >&2; printf tail"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SPEC = (
    f"version: v1\ndeployment: {JOB}\nservices:\n"
    f"  {JOB}:\n    rtype: job\n    image: {{name: busybox:latest}}\n"
    "    command: {entrypoint: [/bin/echo, hello from python]}\n"
    f"  {JOB}-long:\n    rtype: job\n    image: {{name: busybox:latest}}\n"
    "    command: {entrypoint: [/bin/sleep, '300']}\n"
    f"  {JOB}-lines:\n    rtype: job\n    image: {{name: busybox:latest}}\n"
    f"    command: {{entrypoint: [/bin/sh, -c, '{LINES_SCRIPT}']}}\n"
)


def check(condition: bool, what: str) -> None:
    """Stops the scenario at the first step that does not hold."""
    if not condition:
        raise SystemExit(f"conformance failed: {what}")


def expect_unauthenticated(client: JobAgentClient) -> None:
    """The first call, without the token the agent requires, is refused."""
    try:
        client.get_execution("0" * 32)
        check(False, "want UNAUTHENTICATED, got an answer")
    except ClientError as error:
        check(error.code is grpc.StatusCode.UNAUTHENTICATED, f"want UNAUTHENTICATED, got {error}")
    print("unauthenticated ok: python")


# What the scenario compares of a log line: time (microseconds), stream, text, partial,
# truncated.
Line = tuple[int, str, str, bool, bool]


def _line(line: LogLine) -> Line:
    micros = -1 if line.time is None else (line.time - EPOCH) // timedelta(microseconds=1)
    return (micros, line.stream, line.message, line.partial, line.truncated)


def check_log_reads(client: JobAgentClient) -> None:
    """Reads the log of a job that writes both streams and a fragment line by line and batch
    by batch (the lines made here from the columns): the same lines, in order."""
    done = client.wait(client.trigger(f"{JOB}-lines").id)
    check(done.status == "completed", "lines completed")
    by_line = [_line(line) for line in client.logs(done.id)]
    by_batch: list[Line] = []
    for batch in client.log_batches(done.id):
        for index, message in enumerate(batch.messages):
            by_batch.append(
                (
                    batch.times_unix_nano[index] // 1000,
                    batch.streams[index],
                    message,
                    index in batch.partial,
                    batch.truncated and index == 0,
                )
            )
    check(by_line == by_batch, f"line and batch reads differ: {by_line}, {by_batch}")
    stdout = [line[2] for line in by_line if line[1] == "stdout"]
    stderr = [line[2] for line in by_line if line[1] == "stderr"]
    check(
        stdout == ["one", "three", "tail"] and stderr == ["two", "four"],
        f"lines of each stream: {by_line}",
    )
    check(
        all(line[3] == (line[2] == "tail") and not line[4] for line in by_line),
        f"partial only on the fragment: {by_line}",
    )
    tail = [
        message for batch in client.log_batches(done.id, tail_lines=2) for message in batch.messages
    ]
    check(tail == [line[2] for line in by_line[-2:]], f"tail 2: {tail} of {by_line}")


def main(target: str, token: str | None) -> None:
    """Runs the scenario against the agent at `target`."""
    with JobAgentClient.connect(target, token=token) as client:
        client.register(SPEC, replace=True)

        done = client.wait(client.trigger(JOB).id)
        check(done.status == "completed" and done.exit_code == 0, "completed")
        check([line.message for line in client.logs(done.id)] == ["hello from python"], "logs")

        check_log_reads(client)

        long = client.trigger(f"{JOB}-long")
        for event in client.watch(long.id):
            if event.execution.status == "running":
                break
        cancelled = client.cancel(long.id, grace=timedelta(seconds=1))
        check(cancelled.status == "cancelled", "cancelled")

        try:
            client.get_execution("0" * 32)
            check(False, "not found")
        except ClientError as error:
            check(error.code is grpc.StatusCode.NOT_FOUND, "not found")

        seen = []
        for item in client.watch_events(0, job_name=JOB):
            if isinstance(item, ExecutionEvent) and item.execution.id == done.id:
                seen.append(item.sequence)
                if item.execution.terminal:
                    break
        check(len(seen) >= 3, "events of the run")
        resumed = next(
            item
            for item in client.watch_events(seen[1], job_name=JOB)
            if isinstance(item, ExecutionEvent)
        )
        check(resumed.sequence == seen[2], "resume")
    print("conformance ok: python")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="127.0.0.1:50051")
    parser.add_argument(
        "--expect-unauthenticated",
        action="store_true",
        help="only check that the first call is refused with UNAUTHENTICATED",
    )
    args = parser.parse_args()
    token = os.environ.get("JOBAGENT_TOKEN") or None
    if args.expect_unauthenticated:
        with JobAgentClient.connect(args.target, token=token) as client:
            expect_unauthenticated(client)
    else:
        main(args.target, token)
