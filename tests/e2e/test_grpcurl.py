"""grpcurl, knowing no proto file, lists, describes and calls every RPC through reflection."""

from __future__ import annotations

import base64
import json
import subprocess
from typing import Any

import pytest

from tests import tools
from tests.e2e.harness import AgentProcess

SERVICE = "jobagent.v1.JobService"
JOB = (
    "version: v1\ndeployment: curl\nservices:\n  curl-job:\n    rtype: job\n"
    "    image: {name: busybox:latest}\n    command: {entrypoint: [/bin/echo, via grpcurl]}\n"
)


@pytest.fixture(scope="module")
def grpcurl_binary() -> str:
    tools.require("grpcurl")
    found = tools.find("grpcurl")
    assert found is not None
    return found


def grpcurl(
    binary: str, agent: AgentProcess, *words: str, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """Runs `grpcurl -plaintext FLAGS ADDRESS WORDS` (flags first, as grpcurl wants)."""
    return subprocess.run(
        [binary, "-plaintext", "-max-time", "30", *flags, agent.target, *words],
        capture_output=True,
        text=True,
        timeout=60,
    )


def call(binary: str, agent: AgentProcess, method: str, request: dict[str, Any]) -> list[Any]:
    """Calls one RPC with a JSON request; returns the JSON messages it answered."""
    done = grpcurl(binary, agent, f"{SERVICE}/{method}", flags=("-d", json.dumps(request)))
    assert done.returncode == 0, done.stderr
    decoder = json.JSONDecoder()
    text, messages = done.stdout.strip(), []
    while text:
        message, end = decoder.raw_decode(text)
        messages.append(message)
        text = text[end:].strip()
    return messages


def test_grpcurl_lists_describes_and_calls_every_rpc(
    grpcurl_binary: str, agent: AgentProcess
) -> None:
    listed = grpcurl(grpcurl_binary, agent, "list")
    assert SERVICE in listed.stdout.split()
    described = grpcurl(grpcurl_binary, agent, "describe", SERVICE).stdout
    methods = {line.split()[1].split("(")[0] for line in described.splitlines() if " rpc " in line}
    assert len(methods) == 17

    called = set()

    def rpc(method: str, request: dict[str, Any]) -> list[Any]:
        called.add(method)
        return call(grpcurl_binary, agent, method, request)

    (registered,) = rpc("RegisterJob", {"spec_yaml": JOB, "replace": True})
    assert registered["jobs"][0]["name"] == "curl-job"
    assert rpc("GetJob", {"name": "curl-job"})[0]["spec"]["image"]["name"] == "busybox:latest"
    assert "curl-job" in {job["name"] for job in rpc("ListJobs", {})[0]["jobs"]}
    (execution,) = rpc("TriggerJob", {"job_name": "curl-job"})
    assert execution["trigger"]["remote_address"].startswith("ipv4:127.0.0.1:")
    events = rpc("WatchExecution", {"id": execution["id"]})
    assert events[-1]["execution"]["status"] == "EXECUTION_STATUS_COMPLETED"
    lines = rpc("StreamLogs", {"execution_id": execution["id"], "follow": True})
    assert [line["message"] for line in lines] == ["via grpcurl"]
    (batch,) = rpc("StreamLogBatches", {"execution_id": execution["id"]})
    assert batch["messages"] == ["via grpcurl"] and batch["streams"] == ["LOG_STREAM_STDOUT"]
    (chunk,) = rpc("DownloadLogs", {"execution_id": execution["id"]})
    assert base64.b64decode(chunk["data"]).endswith(b" stdout F via grpcurl\n")
    assert rpc("GetExecution", {"id": execution["id"]})[0]["exit_code"] == 0
    listed_executions = rpc("ListExecutions", {"job_name": "curl-job"})[0]["executions"]
    assert execution["id"] in {item["id"] for item in listed_executions}
    refused = grpcurl(
        grpcurl_binary,
        agent,
        f"{SERVICE}/CancelExecution",
        flags=("-d", json.dumps({"id": execution["id"]})),
    )
    called.add("CancelExecution")
    assert refused.returncode != 0 and "FailedPrecondition" in refused.stderr
    refused = grpcurl(
        grpcurl_binary,
        agent,
        f"{SERVICE}/SuspendJob",
        flags=("-d", json.dumps({"name": "curl-job"})),
    )
    assert refused.returncode != 0 and "FailedPrecondition" in refused.stderr
    refused = grpcurl(
        grpcurl_binary,
        agent,
        f"{SERVICE}/ResumeJob",
        flags=("-d", json.dumps({"name": "curl-job"})),
    )
    assert refused.returncode != 0 and "FailedPrecondition" in refused.stderr
    called.update({"SuspendJob", "ResumeJob"})
    # A watch never ends by itself: grpcurl stops it after two seconds.
    watch_flags = ("-d", json.dumps({"job_name": "curl-job"}), "-max-time", "2")
    streamed = grpcurl(grpcurl_binary, agent, f"{SERVICE}/WatchEvents", flags=watch_flags)
    assert execution["id"] in streamed.stdout
    called.add("WatchEvents")
    assert rpc("GetNodeInfo", {})[0]["cpus"] >= 1
    # Pruned while curl-job still holds busybox:latest, which later tests need.
    rpc("PruneImages", {})
    rpc("UnregisterJob", {"name": "curl-job"})
    assert called == methods
