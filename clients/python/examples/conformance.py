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
from datetime import timedelta

import grpc
from jobagent_client import ClientError, ExecutionEvent, JobAgentClient

JOB = "conformance-python"
SPEC = (
    f"version: v1\ndeployment: {JOB}\nservices:\n"
    f"  {JOB}:\n    rtype: job\n    image: {{name: busybox:latest}}\n"
    "    command: {entrypoint: [/bin/echo, hello from python]}\n"
    f"  {JOB}-long:\n    rtype: job\n    image: {{name: busybox:latest}}\n"
    "    command: {entrypoint: [/bin/sleep, '300']}\n"
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


def main(target: str, token: str | None) -> None:
    """Runs the scenario against the agent at `target`."""
    with JobAgentClient.connect(target, token=token) as client:
        client.register(SPEC, replace=True)

        done = client.wait(client.trigger(JOB).id)
        check(done.status == "completed" and done.exit_code == 0, "completed")
        check([line.message for line in client.logs(done.id)] == ["hello from python"], "logs")

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
        resumed = next(item for item in client.watch_events(seen[1], job_name=JOB)
                       if isinstance(item, ExecutionEvent))  # fmt: skip
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
