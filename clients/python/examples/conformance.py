"""The conformance scenario every client passes against a live agent (clients/CONFORMANCE.md).

python clients/python/examples/conformance.py 127.0.0.1:50051
"""

from __future__ import annotations

import sys
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


def main(target: str) -> None:
    """Runs the scenario against the agent at `target`."""
    with JobAgentClient.connect(target) as client:
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
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
