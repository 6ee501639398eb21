"""Which listener checks tokens: the socket always, TCP with a tokens file; unary and
streaming calls alike, against the real gRPC server over a fake runtime."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from jobagent_client import ClientError, JobAgentClient

from agent.api import admin_token
from agent.api.access import Listeners
from agent.api.server import AgentServer
from agent.executor import Executor
from agent.executor.scheduler import CronScheduler
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime

TOKEN = "an-admin-token-0123456789"
MISSING = "0" * 32


@contextmanager
def serving(directory: Path, listeners: Listeners) -> Iterator[tuple[str, str]]:
    """An AgentServer on 127.0.0.1 and on a socket, in a thread; yields both targets."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    socket = directory / "agent.sock"

    async def start() -> tuple[AgentServer, Executor, Store, int]:
        store = Store(directory / "db")
        executor = Executor(store, FakeRuntime(), directory / "logs")
        tokens = admin_token.table(TOKEN)
        scheduler = CronScheduler(executor, store)
        server = AgentServer(executor, scheduler, tokens=tokens, listeners=listeners)
        port = server.listen("127.0.0.1:0")
        server.listen_unix(socket, 0o600)
        await executor.start()
        await server.start()
        return server, executor, store, port

    server, executor, store, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    try:
        yield f"127.0.0.1:{port}", f"unix:{socket}"
    finally:

        async def stop() -> None:
            await server.stop(0)
            await executor.close()
            store.close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def codes(target: str, token: str | None) -> tuple[grpc.StatusCode, ...]:
    """What a unary call, a server stream and reflection (a bidirectional stream) answer."""
    found = []
    with JobAgentClient.connect(target, timeout=10, token=token) as client:
        for call in (client.list_jobs, lambda: list(client.logs(MISSING))):
            try:
                call()
                found.append(grpc.StatusCode.OK)
            except ClientError as error:
                found.append(error.code)
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    with grpc.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        try:
            next(iter(stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=10)))
            found.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            found.append(error.code())
    return tuple(found)


OPEN = (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK)
SHUT = (grpc.StatusCode.UNAUTHENTICATED,) * 3


def test_without_a_tokens_file_tcp_is_open_and_the_socket_wants_the_token(
    tmp_path: Path,
) -> None:
    listeners = Listeners(has_tcp=True, has_socket=True, tcp_needs_token=False)
    with serving(tmp_path, listeners) as (tcp, socket):
        assert codes(tcp, None) == OPEN
        assert codes(tcp, "some-other-token-0123456") == OPEN
        assert codes(socket, None) == SHUT
        assert codes(socket, "some-other-token-0123456") == SHUT
        assert codes(socket, TOKEN) == OPEN


def test_with_a_tokens_file_every_listener_wants_a_token(tmp_path: Path) -> None:
    listeners = Listeners(has_tcp=True, has_socket=True, tcp_needs_token=True)
    with serving(tmp_path, listeners) as (tcp, socket):
        for target in (tcp, socket):
            assert codes(target, None) == SHUT
            assert codes(target, TOKEN) == OPEN


@pytest.mark.parametrize("tcp_needs_token", [True, False])
def test_a_socket_only_server_always_wants_the_token(tmp_path: Path, tcp_needs_token: bool) -> None:
    listeners = Listeners(has_tcp=False, has_socket=True, tcp_needs_token=tcp_needs_token)
    with serving(tmp_path, listeners) as (_, socket):
        assert codes(socket, None) == SHUT
        assert codes(socket, TOKEN) == OPEN
