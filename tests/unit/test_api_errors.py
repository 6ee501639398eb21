"""Errors nobody expected: INTERNAL with an error id that the agent's log also holds."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc

from agent.api.server import AgentServer
from agent.api.service import JobService
from agent.domain import Bookmark
from agent.executor import Executor
from agent.executor.scheduler import CronScheduler
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime

ERROR_ID = re.compile(r"internal error ([0-9a-f]{12})\b")
SERVICE = service_pb.DESCRIPTOR.services_by_name["JobService"]


@pytest.fixture
async def broken(
    tmp_path: Path,
) -> AsyncIterator[tuple[service_grpc.JobServiceAsyncStub, Executor]]:
    """A real server whose executor the test can break."""
    store = Store(tmp_path / "db")
    executor = Executor(store, FakeRuntime(), tmp_path / "logs")
    server = AgentServer(executor, CronScheduler(executor, store))
    port = server.listen("127.0.0.1:0")
    await executor.start()
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield service_grpc.JobServiceStub(channel), executor
    await server.stop(0)
    await executor.close()
    store.close()


def logged_with_traceback(caplog: pytest.LogCaptureFixture, error_id: str) -> bool:
    return any(
        error_id in record.getMessage()
        and record.exc_info is not None
        and "Traceback" in caplog.text
        for record in caplog.records
    )


async def test_an_unexpected_error_in_a_unary_call_is_internal_with_a_logged_id(
    broken: tuple[service_grpc.JobServiceAsyncStub, Executor],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub, executor = broken

    def page_jobs(*args: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(executor, "page_jobs", page_jobs)
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListJobs(service_pb.ListJobsRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    found = ERROR_ID.search(caught.value.details() or "")
    assert found is not None and "a bug" not in (caught.value.details() or "")
    assert logged_with_traceback(caplog, found.group(1))
    assert "ZeroDivisionError" in caplog.text


async def test_an_unexpected_error_in_a_stream_is_internal_with_a_logged_id(
    broken: tuple[service_grpc.JobServiceAsyncStub, Executor],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stub, executor = broken

    async def watch_events(*args: Any) -> AsyncIterator[Bookmark]:
        yield Bookmark(0)
        raise KeyError("a bug mid-stream")

    monkeypatch.setattr(executor, "watch_events", watch_events)
    received = []
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in stub.WatchEvents(service_pb.WatchEventsRequest(), timeout=10):
            received.append(item)
    assert len(received) == 1 and received[0].HasField("bookmark")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    found = ERROR_ID.search(caught.value.details() or "")
    assert found is not None
    assert logged_with_traceback(caplog, found.group(1))
    # The server goes on serving.
    assert (await stub.GetNodeInfo(service_pb.GetNodeInfoRequest(), timeout=10)).agent_version


@pytest.mark.parametrize("method", sorted(SERVICE.methods_by_name))
def test_every_rpc_of_the_service_maps_its_errors(method: str) -> None:
    assert getattr(getattr(JobService, method), "__wrapped__", None) is not None
