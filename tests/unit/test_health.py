"""The health service on a real grpc.aio server on loopback: a watcher that reads nothing
holds up nobody, and watches are bounded like every other stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.api.health import SERVICE_NAME_LIMIT, HealthService
from agent.api.limits import ApiLimits, StreamSlots
from tests.rawh2 import SilentCaller

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
WATCH = "/grpc.health.v1.Health/Watch"


class HealthServer:
    """A server of the health service alone, and a channel to it."""

    def __init__(self, server: grpc.aio.Server, health: HealthService, port: int) -> None:
        self.server = server
        self.health = health
        self.address = f"127.0.0.1:{port}"
        self.channel = grpc.aio.insecure_channel(self.address)
        self.stub = health_pb2_grpc.HealthStub(self.channel)

    def watch(self, service: str = "") -> Any:
        """A Watch call of `service`."""
        return self.stub.Watch(health_pb2.HealthCheckRequest(service=service), timeout=10)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[StreamSlots], Any]]:
    servers: list[HealthServer] = []

    async def start(streams: StreamSlots) -> HealthServer:
        server = grpc.aio.server()
        health = HealthService(streams)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        health.set("", SERVING)
        servers.append(HealthServer(server, health, port))
        return servers[-1]

    yield start
    for each in servers:
        await each.channel.close(None)
        await each.server.stop(0)


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the condition never held")


async def test_a_watcher_that_reads_nothing_holds_up_no_change_and_no_other_watcher(
    serve: Callable[[StreamSlots], Any],
) -> None:
    streams = StreamSlots()
    server = await serve(streams)
    with SilentCaller(server.address) as silent:
        for _ in range(3):
            silent.call(WATCH, health_pb2.HealthCheckRequest(service="").SerializeToString())
        await until(lambda: streams.open == 3)
        # Their first messages are stuck in the server: the status changes all the same.
        server.health.set("", NOT_SERVING)
        server.health.set("", SERVING)
        watcher = server.watch()
        assert (await watcher.read()).status == SERVING
        server.health.enter_graceful_shutdown()
        assert (await watcher.read()).status == NOT_SERVING
        server.health.set("", SERVING)
        check = await server.stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert check.status == NOT_SERVING
        watcher.cancel()
    # The stuck calls end with the connection, and give their slots back.
    await until(lambda: streams.open == 0)


async def test_watches_take_their_callers_stream_slots(
    serve: Callable[[StreamSlots], Any],
) -> None:
    streams = StreamSlots(ApiLimits(streams=10, streams_per_caller=2))
    server = await serve(streams)
    first, second = server.watch(), server.watch()
    assert (await first.read()).status == SERVING
    assert (await second.read()).status == SERVING
    third = server.watch()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await third.read()
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-streams-per-caller" in (refused.value.details() or "")
    first.cancel()
    await until(lambda: streams.open == 1)
    again = server.watch()
    assert (await again.read()).status == SERVING
    assert streams.open == 2
    second.cancel()
    again.cancel()
    await until(lambda: streams.open == 0)


async def test_names_it_does_not_serve(serve: Callable[[StreamSlots], Any]) -> None:
    streams = StreamSlots()
    server = await serve(streams)
    too_long = server.watch("x" * (SERVICE_NAME_LIMIT + 1))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await too_long.read()
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith("service: longer than")
    assert streams.open == 0
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await server.stub.Check(health_pb2.HealthCheckRequest(service="other"), timeout=5)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    # A watch of a service not served (yet) hears of it once it is.
    later = server.watch("later")
    assert (await later.read()).status == SERVICE_UNKNOWN
    server.health.set("later", SERVING)
    assert (await later.read()).status == SERVING
    later.cancel()
    listed = await server.stub.List(health_pb2.HealthListRequest(), timeout=5)
    assert {name: each.status for name, each in listed.statuses.items()} == {
        "": SERVING,
        "later": SERVING,
    }
