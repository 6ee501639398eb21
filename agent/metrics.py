"""Prometheus metrics: what happened to executions, and the node's load, over HTTP.

Counters and histograms are fed by the event bus (every recorded transition passes it), by
the runtime manager (pulls) and by the supervisor (restarts of background tasks); gauges
are read from the executor when scraped.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from agent.domain import EventKind, ExecutionEvent, NodeEvent

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400)
PULL_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The agent's metrics, in a registry of their own (one per agent)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.executions = Counter(
            "jobagent_executions",
            "Executions that reached a terminal status.",
            ["status", "reason"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "jobagent_execution_duration_seconds",
            "Run time of finished executions (start to end, or creation to end).",
            ["status"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.transitions = Counter(
            "jobagent_transitions",
            "Recorded execution transitions, by new status.",
            ["status"],
            registry=self.registry,
        )
        self.pulls = Histogram(
            "jobagent_image_pull_seconds",
            "Time to make an image present (pull or check).",
            ["outcome"],
            buckets=PULL_BUCKETS,
            registry=self.registry,
        )
        self.streams = Gauge(
            "jobagent_open_streams",
            "Server streams open now, by RPC.",
            ["rpc"],
            registry=self.registry,
        )
        self.active = Gauge(
            "jobagent_active_executions", "Executions holding a slot.", registry=self.registry
        )
        self.queued = Gauge(
            "jobagent_queued_executions", "Executions waiting for a slot.", registry=self.registry
        )
        self.running = Gauge(
            "jobagent_running_containers",
            "Executions whose container runs now.",
            registry=self.registry,
        )
        self.store_durable = Gauge(
            "jobagent_store_durable_timestamp_seconds",
            "When every record the store had committed was last known to be on disk "
            "(checked each second; 0 before the first check).",
            registry=self.registry,
        )
        self.store_stalled = Gauge(
            "jobagent_store_stalled",
            "1 while the store refuses writes: a write waited for its database in vain, "
            "and none has gone through since.",
            registry=self.registry,
        )
        self.task_restarts = Counter(
            "jobagent_task_restarts",
            "Restarts of the agent's background tasks after a failure, by task.",
            ["task"],
            registry=self.registry,
        )

    def watch_load(
        self, active: Callable[[], int], queued: Callable[[], int], running: Callable[[], int]
    ) -> None:
        """Reads the gauges from the executor at each scrape."""
        self.active.set_function(lambda: float(active()))
        self.queued.set_function(lambda: float(queued()))
        self.running.set_function(lambda: float(running()))

    def watch_store(self, durable_at: Callable[[], float], stalled: Callable[[], bool]) -> None:
        """Reads the store's durable time and whether it is stalled at each scrape."""
        self.store_durable.set_function(durable_at)
        self.store_stalled.set_function(lambda: float(stalled()))

    def observe(self, event: NodeEvent) -> None:
        """Counts a recorded event (an EventBus listener)."""
        if not isinstance(event, ExecutionEvent) or event.kind is not EventKind.TRANSITION:
            return
        execution = event.execution
        self.transitions.labels(execution.status.value).inc()
        if execution.status.terminal:
            reason = "" if execution.failure_reason is None else execution.failure_reason.value
            self.executions.labels(execution.status.value, reason).inc()
            if execution.duration is not None:
                self.durations.labels(execution.status.value).observe(
                    execution.duration.total_seconds()
                )

    def observe_pull(self, seconds: float, succeeded: bool) -> None:
        """Counts one image pull (or presence check)."""
        self.pulls.labels("ok" if succeeded else "error").observe(seconds)

    def count_restart(self, task: str) -> None:
        """Counts one restart of a supervised background task."""
        self.task_restarts.labels(task).inc()

    def open_stream(self, rpc: str) -> AbstractContextManager[object]:
        """Counts a server stream of `rpc` as open for the duration of a `with`."""
        return self.streams.labels(rpc).track_inprogress()

    def serve(self, address: str) -> int:
        """Serves /metrics on host:port in a thread; returns the port."""
        host, _, port = address.rpartition(":")
        server, _thread = start_http_server(int(port), host.strip("[]"), registry=self.registry)
        return int(server.server_address[1])
