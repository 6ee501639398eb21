"""What an operator sees: Prometheus metrics and the JSON log of an agent set up by file."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator

import pytest
from jobagent_client import ClientError
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import RUNTIMES, start_agent
from tests.e2e.harness import AgentProcess, Registry, free_port, sweep, wait_until

JOBS = (
    "version: v1\ndeployment: observed\nservices:\n"
    "  observed-ok:\n    rtype: job\n    image: {name: busybox:latest}\n"
    "    command: {entrypoint: [/bin/true]}\n"
    "  observed-bad:\n    rtype: job\n    image: {name: busybox:latest}\n"
    "    command: {entrypoint: [/bin/sh, -c, 'exit 3']}\n"
)


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry
) -> Iterator[tuple[AgentProcess, str]]:
    port = free_port()
    directory = tmp_path_factory.mktemp("observed")
    settings = directory / "agent.yaml"
    settings.write_text(f"metrics_listen: 127.0.0.1:{port}\nlog_format: json\nmax_concurrent: 7\n")
    agent = start_agent(
        directory / "data", RUNTIMES[0], registry, extra_args=("--config", str(settings))
    )
    yield agent, f"http://127.0.0.1:{port}/metrics"
    agent.stop()
    sweep(agent)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_executions_pulls_and_open_streams(
    observed: tuple[AgentProcess, str],
) -> None:
    agent, url = observed
    with agent.client() as client:
        assert client.node_info().max_concurrent == 7  # from the config file
        client.register(JOBS, replace=True)
        assert client.wait(client.trigger("observed-ok").id).status == "completed"
        assert client.wait(client.trigger("observed-bad").id).status == "failed"
        metrics = scrape(url)
        assert (
            metrics[("jobagent_executions_total", (("reason", ""), ("status", "completed")))] >= 1
        )
        assert (
            metrics[("jobagent_executions_total", (("reason", "exit_code"), ("status", "failed")))]
            >= 1
        )
        assert (
            metrics[("jobagent_execution_duration_seconds_count", (("status", "completed"),))] >= 1
        )
        assert metrics[("jobagent_image_pull_seconds_count", (("outcome", "ok"),))] >= 2
        assert metrics[("jobagent_queued_executions", ())] == 0
        assert metrics[("jobagent_running_containers", ())] == 0

        events = client.watch_events(0)
        opened = threading.Event()

        def consume() -> None:
            try:
                for _ in events:
                    opened.set()
            except ClientError:
                pass  # the channel closes at the end of the test

        threading.Thread(target=consume, daemon=True).start()
        assert opened.wait(10)
        assert scrape(url)[("jobagent_open_streams", (("rpc", "WatchEvents"),))] == 1


def test_every_log_line_is_json_and_names_its_execution(
    observed: tuple[AgentProcess, str],
) -> None:
    agent, _ = observed
    with agent.client() as client:
        client.register(JOBS, replace=True)
        execution = client.wait(client.trigger("observed-ok").id)
    lines = agent.log_file.read_text().splitlines
    wait_until(
        lambda: any(execution.id in line and "completed" in line for line in lines()),
        10,
        "the last log line",
    )
    entries = [json.loads(line) for line in lines()]
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    mine = [entry for entry in entries if entry.get("execution_id") == execution.id]
    assert [entry["message"].split()[2] for entry in mine] == [
        "pending",
        "initializing",
        "running",
        "completed",
    ]
