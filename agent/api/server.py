"""The grpc.aio server: JobService, grpc.health.v1 and server reflection."""

from __future__ import annotations

from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from jobagent.v1 import job_service_pb2, job_service_pb2_grpc

from agent.api import sockets
from agent.api.access import Listeners, interceptors
from agent.api.auth import TokenTable
from agent.api.health import HealthService
from agent.api.limits import ApiLimits, StreamSlots
from agent.api.service import JobService, NodeFacts
from agent.exclusive import address_in_use
from agent.executor import Executor
from agent.executor.scheduler import CronScheduler
from agent.metrics import Metrics

SERVICE_NAME = job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name


class AgentServer:
    """The agent's gRPC server and its health status."""

    def __init__(
        self,
        executor: Executor,
        scheduler: CronScheduler,
        *,
        node: NodeFacts | None = None,
        tokens: TokenTable | None = None,
        metrics: Metrics | None = None,
        listeners: Listeners | None = None,
        limits: ApiLimits | None = None,
    ) -> None:
        limits = limits or ApiLimits()
        checks = () if tokens is None else interceptors(tokens, listeners or Listeners())
        options = [
            # No SO_REUSEPORT: a second agent on this address fails to bind instead of
            # sharing its connections.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", limits.request_bytes),
        ]
        self.server = grpc.aio.server(interceptors=checks, options=options)
        self._sockets: list[tuple[Path, int, int | None]] = []
        self._started = False
        # False while a core background task is down (see agent.supervisor).
        self._core_healthy = True
        streams = StreamSlots(limits)
        self.health = HealthService(streams)
        job_service_pb2_grpc.add_JobServiceServicer_to_server(
            JobService(executor, scheduler, node=node, metrics=metrics, streams=streams),
            self.server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )

    def listen(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        """Binds a TCP address (with TLS when `credentials` are given; the caller checks that
        plain text stays on loopback); returns the port."""
        try:
            if credentials is None:
                return self.server.add_insecure_port(address)
            return self.server.add_secure_port(address, credentials)
        except RuntimeError as error:
            raise address_in_use(address) from error

    def listen_unix(self, path: Path, mode: int, gid: int | None = None) -> None:
        """Binds a unix socket (see agent.api.sockets.prepare); it gets `mode` and group
        `gid` once serving."""
        self.server.add_insecure_port(f"unix:{path}")
        self._sockets.append((path, mode, gid))

    async def start(self) -> None:
        """Starts serving and reports SERVING."""
        await self.server.start()
        for path, mode, gid in self._sockets:
            sockets.set_owner(path, mode, gid)
        self._started = True
        await self._report_health()

    async def set_core_health(self, healthy: bool) -> None:
        """Health answers NOT_SERVING, for the node ("") and JobService alike, while a core
        background task is down, and SERVING again once it runs (until stopping)."""
        self._core_healthy = healthy
        if self._started:
            await self._report_health()

    async def _report_health(self) -> None:
        status = health_pb2.HealthCheckResponse.SERVING
        if not self._core_healthy:
            status = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    async def report_stopping(self) -> None:
        """Health answers NOT_SERVING from now on (load balancers and schedulers look away)."""
        self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Reports NOT_SERVING, then stops, giving calls `grace` seconds to finish."""
        await self.report_stopping()
        await self.server.stop(grace)
