"""The one place where domain errors become gRPC status codes (as containerd's errdefs)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from agent.errors import (
    AgentError,
    AlreadyExists,
    FailedPrecondition,
    HostPolicyRefused,
    InvalidSpec,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

ERROR_DOMAIN = "jobagent"
CODES: list[tuple[type[AgentError], grpc.StatusCode, str]] = [
    (InvalidSpec, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (NotFound, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS"),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
    (Unavailable, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
    (OutOfRange, grpc.StatusCode.OUT_OF_RANGE, "OUT_OF_RANGE"),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
]

Handler = TypeVar("Handler", bound=Callable[..., Any])


def to_status(error: AgentError) -> grpc.Status:
    """The gRPC status of a domain error, with ErrorInfo and (for bad input) BadRequest."""
    code, reason = next(
        ((code, reason) for kind, code, reason in CODES if isinstance(error, kind)),
        (grpc.StatusCode.INTERNAL, "INTERNAL"),
    )
    status = status_pb2.Status(code=code.value[0], message=str(error))
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
    if isinstance(error, InvalidSpec):
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=error.field, description=error.reason
        )
        status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    if isinstance(error, HostPolicyRefused):
        refused = error_details_pb2.PreconditionFailure.Violation(
            type="HOST_POLICY", subject=error.field, description=error.reason
        )
        status.details.add().Pack(error_details_pb2.PreconditionFailure(violations=[refused]))
    return rpc_status.to_status(status)


def maps_errors(handler: Handler) -> Handler:
    """Wraps a servicer method (coroutine or async generator) to answer AgentErrors properly."""
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in handler(self, request, context):
                    yield item
            except AgentError as error:
                await context.abort_with_status(to_status(error))

        return cast(Handler, stream)

    @functools.wraps(handler)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await handler(self, request, context)
        except AgentError as error:
            await context.abort_with_status(to_status(error))

    return cast(Handler, unary)
