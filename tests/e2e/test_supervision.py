"""Supervised background work in the real agent: a task that fails is restarted with a
backoff and counted; while the core one (the cron scheduler) is down health says
NOT_SERVING; the agent process never exits; the store's sync, restarted, makes the records
durable and checkpoints the store's log. Faults come from the test-only fault points
(agent/faults.py)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobagent_client import JobAgentClient
from prometheus_client.parser import text_string_to_metric_families

from agent.api.server import SERVICE_NAME
from tests.e2e.conftest import RUNTIMES, running_agent
from tests.e2e.harness import AgentProcess, Registry, free_port, wait_until
from tests.walindex import wal_state

TICKER = (
    "version: v1\ndeployment: supervised\nservices:\n  ticker:\n    rtype: cron\n"
    "    schedule: '* * * * * *'\n    concurrency_policy: forbid\n"
    "    image: {name: busybox:latest}\n    command: {entrypoint: [/bin/true]}\n"
)
QUICK = (
    "version: v1\ndeployment: quick\nservices:\n  quick:\n    rtype: job\n"
    "    image: {name: busybox:latest}\n    command: {entrypoint: [/bin/true]}\n"
)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def metric(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The sample `name` with `labels` (none by default) from the agent's metrics; 0 when
    there is none yet."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == (labels or {}):
                return sample.value
    return 0.0


def restarts(url: str, task: str) -> float:
    """jobagent_task_restarts_total of `task` (0 before its first restart)."""
    return metric(url, "jobagent_task_restarts_total", {"task": task})


def health(agent: AgentProcess) -> tuple[int, int]:
    """The health status of the node ("") and of JobService."""
    with grpc.insecure_channel(agent.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        node, service = (
            stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2).status
            for name in ("", SERVICE_NAME)
        )
        return node, service


@contextmanager
def agent_with_faults(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch, faults: str
) -> Iterator[tuple[AgentProcess, str]]:
    """An agent of the test's own playing the fault script `faults` (agent/faults.py), and
    the URL of its metrics."""
    monkeypatch.setenv("JOBAGENT_FAULTS", faults)
    port = free_port()
    options = {"extra_args": ("--metrics-listen", f"127.0.0.1:{port}")}
    with running_agent(tmp_path / "agent", RUNTIMES[0], registry, **options) as agent:
        yield agent, f"http://127.0.0.1:{port}/metrics"


def runs(client: JobAgentClient) -> int:
    return len(client.list_executions("ticker"))


def test_a_failing_scheduler_is_restarted_counted_and_shown_in_health(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Retention fails twice at start (not core: health stays SERVING); the scheduler's first
    # tick passes, and the three after it (from the registration on) fail: with the
    # backoff of 1, 2 and 4 seconds it is down for about eight.
    faults = "retention:raise:2,scheduler:pass:1,scheduler:raise:3"
    with agent_with_faults(tmp_path, registry, monkeypatch, faults) as (agent, url):
        while restarts(url, "retention") < 2:
            assert health(agent) == (SERVING, SERVING)
            time.sleep(0.1)
        with agent.client() as client:
            client.register(TICKER)  # wakes the scheduler: its next tick fails
            wait_until(lambda: health(agent) == (NOT_SERVING, NOT_SERVING), 10, "NOT_SERVING")
            down_since = time.monotonic()
            wait_until(lambda: health(agent) == (SERVING, SERVING), 30, "SERVING again")
            assert time.monotonic() - down_since > 5
            assert restarts(url, "scheduler") == 3
            before = runs(client)
            wait_until(lambda: runs(client) >= before + 2, 15, "the ticker to fire again")
        assert agent.process is not None and agent.process.poll() is None
        log = agent.log_file.read_text()
        assert "background task scheduler failed; restarting it in 4s" in log
        assert "InjectedFault: injected fault at scheduler" in log  # the traceback
        assert restarts(url, "retention") == 2


def test_the_store_sync_restarted_after_failures_makes_the_records_durable(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    faults = "store-sync:raise:3"
    with agent_with_faults(tmp_path, registry, monkeypatch, faults) as (agent, url):
        second_failure = "background task store-sync failed; restarting it in 2s"
        wait_until(lambda: second_failure in agent.log_file.read_text(), 10, "two failures")
        # Its next try, 2 s on, fails too, and the one after waits 4 s more: nothing was
        # found durable yet.
        assert metric(url, "jobagent_store_durable_timestamp_seconds") == 0
        with agent.client() as client:
            client.register(QUICK)
            execution = client.wait(client.trigger("quick").id)
            assert execution.status == "completed", execution.message
            ended = time.time()
            wait_until(
                lambda: metric(url, "jobagent_store_durable_timestamp_seconds") >= ended,
                10,
                "the records durable",
            )
            # Then the pass checkpointed the whole log and started it again with a write
            # of its own, its only frame: commits on the loop did neither.
            database = agent.cwd / agent.data_dir / "agent.db"
            wait_until(lambda: wal_state(database).frames == 1, 5, "the log started again")
        assert restarts(url, "store-sync") == 3
        assert agent.process is not None and agent.process.poll() is None
