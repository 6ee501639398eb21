"""The one place where domain errors become gRPC status codes (as containerd's errdefs)."""

from __future__ import annotations

import functools
import inspect
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from agent.errors import (
    AgentError,
    AlreadyExists,
    DataLoss,
    DiskFull,
    FailedPrecondition,
    HostPolicyRefused,
    InvalidSpec,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    StoreStalled,
    Unauthenticated,
    Unavailable,
)

log = logging.getLogger(__name__)
ERROR_DOMAIN = "jobagent"
# An error id is 12 hex digits: short enough to read out, unique enough to grep for.
ERROR_ID_BYTES = 6
CODES: list[tuple[type[AgentError], grpc.StatusCode, str]] = [
    (InvalidSpec, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (NotFound, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS"),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
    # Before Unavailable, of which it is one: the first match wins.
    (StoreStalled, grpc.StatusCode.UNAVAILABLE, "STORE_STALLED"),
    (Unavailable, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
    (OutOfRange, grpc.StatusCode.OUT_OF_RANGE, "OUT_OF_RANGE"),
    # Before ResourceExhausted, of which it is one: the first match wins.
    (DiskFull, grpc.StatusCode.RESOURCE_EXHAUSTED, "DISK_FULL"),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
    (DataLoss, grpc.StatusCode.DATA_LOSS, "DATA_LOSS"),
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


def internal_status(error: BaseException, method: str) -> grpc.Status:
    """INTERNAL for an error nobody expected, with an id that is also in the agent's log.

    The caller sees the id, never the exception (its text may hold paths or data); the
    log line beside it has the traceback. Never UNKNOWN: that is what grpc.aio answers
    for an exception that escapes a handler.
    """
    error_id = secrets.token_hex(ERROR_ID_BYTES)
    log.error("internal error %s in %s: %r", error_id, method, error, exc_info=error)
    status = status_pb2.Status(
        code=grpc.StatusCode.INTERNAL.value[0],
        message=f"internal error {error_id}: the agent's log has the details",
    )
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(
            reason="INTERNAL", domain=ERROR_DOMAIN, metadata={"error_id": error_id}
        )
    )
    return rpc_status.to_status(status)


async def _abort(context: Any, error: Exception, method: str) -> None:
    """Ends the call with the error's status: an abort already under way goes on, an
    AgentError gets its code, anything else INTERNAL with an error id."""
    if isinstance(error, grpc.aio.AbortError):
        raise error
    if isinstance(error, AgentError):
        await context.abort_with_status(to_status(error))
    else:
        await context.abort_with_status(internal_status(error, method))


def maps_errors(handler: Handler) -> Handler:
    """Wraps a servicer method (coroutine or async generator): AgentErrors get their status
    code, and anything else INTERNAL with an error id (never UNKNOWN)."""
    method = handler.__name__
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            try:
                async for item in handler(self, request, context):
                    yield item
            except Exception as error:
                await _abort(context, error, method)

        return cast(Handler, stream)

    @functools.wraps(handler)
    async def unary(self: Any, request: Any, context: Any) -> Any:
        try:
            return await handler(self, request, context)
        except Exception as error:
            await _abort(context, error, method)

    return cast(Handler, unary)
