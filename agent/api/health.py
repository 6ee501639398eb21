"""The grpc.health.v1 service, open to every caller: Check, and Watch in a stream slot.

grpcio-health-checking's aio servicer sends each Watch update while it holds a lock that
the service's other watchers and its `set` share. A watcher whose client reads nothing (an
HTTP/2 window of 0) kept that lock for good: every later status change waited behind it,
the agent's stop on SIGTERM and a core task's restart among them. Here `set` only records
the status and wakes the watchers; each watcher sends from its own call, so a client that
reads nothing holds up nobody but itself.

Watch needs no token, so it is bounded as every other stream is: it takes a stream slot of
its caller (agent.api.limits; all callers without credentials are one caller), and a
service name longer than any this agent serves is refused rather than kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

from grpc_health.v1 import health_pb2

from agent.api.errors import maps_errors
from agent.api.identity import caller_identity
from agent.api.limits import StreamSlots
from agent.errors import InvalidSpec, NotFound

Status: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus.ValueType
SERVICE_NAME_LIMIT = 256


class HealthService:
    """Each service's serving status, told to Check and to every Watch."""

    def __init__(self, streams: StreamSlots) -> None:
        self._streams = streams
        self._statuses: dict[str, Status] = {}
        self._watchers: set[asyncio.Event] = set()
        self._stopping = False

    def set(self, service: str, status: Status) -> None:
        """Records `service`'s status and wakes its watchers; ignored once stopping."""
        if not self._stopping:
            self._record(service, status)

    def enter_graceful_shutdown(self) -> None:
        """Every service is NOT_SERVING from now on, whatever `set` says later."""
        self._stopping = True
        for service in list(self._statuses):
            self._record(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    def _record(self, service: str, status: Status) -> None:
        self._statuses[service] = status
        for changed in self._watchers:
            changed.set()

    @maps_errors
    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        """The service's status; NOT_FOUND for a service this agent does not serve."""
        status = self._statuses.get(request.service)
        if status is None:
            raise NotFound(f"service {request.service[:SERVICE_NAME_LIMIT]!r} is not served here")
        return health_pb2.HealthCheckResponse(status=status)

    @maps_errors
    async def List(
        self, request: health_pb2.HealthListRequest, context: Any
    ) -> health_pb2.HealthListResponse:
        """Every service's status (the agent serves two)."""
        statuses = {
            service: health_pb2.HealthCheckResponse(status=status)
            for service, status in self._statuses.items()
        }
        return health_pb2.HealthListResponse(statuses=statuses)

    @maps_errors
    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The service's status now, then each change (SERVICE_UNKNOWN while it has none)."""
        if len(request.service) > SERVICE_NAME_LIMIT:
            raise InvalidSpec("service", f"longer than {SERVICE_NAME_LIMIT} characters")
        service = request.service
        with self._streams.take(caller_identity(context), "Watch") as slot:
            context.add_done_callback(slot.release)
            changed = asyncio.Event()
            self._watchers.add(changed)
            try:
                told = None
                while True:
                    # Cleared before the status is read: a change meanwhile sets it again.
                    changed.clear()
                    status = self._statuses.get(
                        service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                    )
                    if status != told:
                        told = status
                        yield health_pb2.HealthCheckResponse(status=status)
                    await changed.wait()
            finally:
                self._watchers.discard(changed)
