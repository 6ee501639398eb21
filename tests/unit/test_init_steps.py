"""Init steps against real sockets and HTTP servers on 127.0.0.1, and a fake runtime."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from agent.domain import (
    EventKind,
    FailureReason,
    HostPolicy,
    ImageSpec,
    InitAction,
    InitFailurePolicy,
    InitStep,
    JobSpec,
    Status,
    StepFailure,
    Trigger,
    TriggerKind,
)
from agent.executor import Executor
from agent.executor.init_steps import run_steps
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime

Events = list[tuple[EventKind, str, str]]
# Wait steps need host networking, which the agent must allow.
ON_HOST_NETWORK = HostPolicy(allow_host_network=True)


def tcp(step_id: str, port: int, **options: object) -> InitStep:
    params = {"host": "127.0.0.1", "port": port, "timeout": 0.3}
    return InitStep(step_id, InitAction.WAIT_TCP, params, **options)  # type: ignore[arg-type]


async def never_runs(step: InitStep, argv: Sequence[str], timeout: float) -> int:
    raise AssertionError("no container expected")


@pytest.fixture
async def open_port() -> AsyncIterator[int]:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_wait_tcp_succeeds_on_an_open_port(open_port: int) -> None:
    events: Events = []
    failure = await run_steps(
        [tcp("db", open_port)], never_runs, lambda *e: events.append(e), host_network=True
    )
    assert failure is None
    assert [kind for kind, _, _ in events] == [
        EventKind.INIT_STEP_STARTED,
        EventKind.INIT_STEP_SUCCEEDED,
    ]


async def test_a_wait_of_a_job_with_its_own_network_fails_without_probing(
    open_port: int,
) -> None:
    events: Events = []
    failure = await run_steps(
        [tcp("db", open_port)], never_runs, lambda *e: events.append(e), host_network=False
    )
    assert failure is not None and "needs host_network" in failure
    assert [kind for kind, _, _ in events] == [
        EventKind.INIT_STEP_STARTED,
        EventKind.INIT_STEP_FAILED,
    ]


async def test_a_failed_step_is_retried_then_fails_the_sequence(closed_port: int) -> None:
    events: Events = []
    steps = [tcp("db", closed_port, retry=1), tcp("never", closed_port)]
    failure = await run_steps(steps, never_runs, lambda *e: events.append(e), host_network=True)
    assert failure is not None and "init step db failed" in failure
    assert [step for _, step, _ in events] == ["db", "db"]
    assert events[-1][0] is EventKind.INIT_STEP_FAILED


@pytest.mark.parametrize("mode", [StepFailure.WARN, StepFailure.CONTINUE])
async def test_warn_and_continue_let_the_sequence_go_on(
    closed_port: int, open_port: int, mode: StepFailure
) -> None:
    events: Events = []
    steps = [tcp("optional", closed_port, on_failure=mode), tcp("db", open_port)]
    assert (
        await run_steps(steps, never_runs, lambda *e: events.append(e), host_network=True) is None
    )
    failed = [message for kind, _, message in events if kind is EventKind.INIT_STEP_FAILED]
    assert len(failed) == 1
    assert ("warning" in failed[0]) is (mode is StepFailure.WARN)
    assert events[-1][:2] == (EventKind.INIT_STEP_SUCCEEDED, "db")


async def test_the_step_timeout_bounds_each_attempt() -> None:
    step = InitStep("nap", InitAction.SLEEP, {"seconds": 5}, timeout_seconds=0.05)
    failure = await run_steps([step], never_runs, lambda *e: None, host_network=True)
    assert failure is not None and "timed out after 0.05s" in failure


@pytest.fixture
def http_server() -> Iterator[str]:
    hits = {"count": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits["count"] += 1
            self.send_response(200 if hits["count"] >= 3 else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ready"
    server.shutdown()


async def test_wait_http_waits_for_the_expected_status(http_server: str) -> None:
    step = InitStep(
        "ready", InitAction.WAIT_HTTP, {"url": http_server, "expect_status": 200, "timeout": 10}
    )
    assert await run_steps([step], never_runs, lambda *e: None, host_network=True) is None


async def test_run_fails_on_a_nonzero_exit() -> None:
    async def exits_two(step: InitStep, argv: Sequence[str], timeout: float) -> int:
        assert list(argv) == ["/bin/sh", "-c", "migrate"]
        return 2

    step = InitStep(
        "migrate", InitAction.RUN, {"command": ["/bin/sh", "-c", "migrate"], "timeout": 5}
    )
    failure = await run_steps([step], exits_two, lambda *e: None, host_network=True)
    assert failure is not None and "exited with code 2" in failure


async def test_the_executor_fails_with_init_and_records_step_events(
    tmp_path: Path, closed_port: int
) -> None:
    runtime = FakeRuntime()
    store = Store(tmp_path / "db")
    executor = Executor(store, runtime, tmp_path / "logs", host_policy=ON_HOST_NETWORK)
    steps = (tcp("db", closed_port),)
    spec = JobSpec("gated", ImageSpec("busybox"), init_steps=steps, host_network=True)
    executor.register_jobs([spec], "", replace_existing=False)
    execution = await executor.trigger("gated", Trigger(TriggerKind.CLI))
    events = [event async for event in executor.watch(execution.id)]
    assert [event.kind for event in events][-3:] == [
        EventKind.INIT_STEP_STARTED,
        EventKind.INIT_STEP_FAILED,
        EventKind.TRANSITION,
    ]
    final = executor.get_execution(execution.id)
    assert (final.status, final.failure_reason) == (Status.FAILED, FailureReason.INIT)
    assert runtime.created == []
    await executor.close()
    store.close()


async def test_restart_runs_the_init_steps_again(tmp_path: Path, closed_port: int) -> None:
    runtime = FakeRuntime()
    store = Store(tmp_path / "db")
    executor = Executor(store, runtime, tmp_path / "logs", host_policy=ON_HOST_NETWORK)
    spec = JobSpec(
        "again",
        ImageSpec("busybox"),
        init_steps=(tcp("db", closed_port),),
        on_init_failure=InitFailurePolicy.RESTART,
        host_network=True,
    )
    executor.register_jobs([spec], "", replace_existing=False)
    execution = await executor.trigger("again", Trigger(TriggerKind.CLI))
    events = [event async for event in executor.watch(execution.id)]
    started = [event for event in events if event.kind is EventKind.INIT_STEP_STARTED]
    assert len(started) == 3
    assert executor.get_execution(execution.id).failure_reason is FailureReason.INIT
    await executor.close()
    store.close()


async def test_a_lost_monitor_of_a_step_container_fails_the_step(tmp_path: Path) -> None:
    runtime = FakeRuntime()
    store = Store(tmp_path / "db")
    executor = Executor(store, runtime, tmp_path / "logs")
    step = InitStep("migrate", InitAction.RUN, {"command": ["/bin/true"], "timeout": 5})
    executor.register_jobs(
        [JobSpec("stepped", ImageSpec("busybox"), init_steps=(step,))], "", replace_existing=False
    )
    execution = await executor.trigger("stepped", Trigger(TriggerKind.CLI))
    async with asyncio.timeout(5):
        while not runtime.created:
            await asyncio.sleep(0.01)
    runtime.lose(runtime.created[0])
    events = [event async for event in executor.watch(execution.id)]
    assert EventKind.INIT_STEP_FAILED in [event.kind for event in events]
    final = executor.get_execution(execution.id)
    assert (final.status, final.failure_reason) == (Status.FAILED, FailureReason.INIT)
    assert "is lost" in final.message
    await executor.close()
    store.close()
