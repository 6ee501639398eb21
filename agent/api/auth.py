"""Bearer tokens with roles, checked by a server interceptor before any handler runs.

A tokens file (YAML) lists who may call:

    tokens:
      - {name: scheduler, role: operator, sha256: <hex digest of the token>}
      - {name: admin, role: admin, token: <the token itself>}

viewer reads, watches and streams logs (with env values redacted unless the agent runs
with --show-env-to-viewers); operator also triggers, cancels, suspends and resumes; admin
also registers, unregisters and prunes images. Health stays open to all, reflection needs
viewer, and any other method, a JobService method missing from the table included, needs
admin (fail closed).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import yaml
from grpc_health.v1 import health

from agent.api.errors import to_status
from agent.api.identity import TOKEN_NAME
from agent.api.redact import redacted
from agent.errors import AgentError, InvalidSpec, PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)


class Role(enum.IntEnum):
    """What a token may do; each role may do what the roles below it may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3


SERVICE_PREFIX = "/jobagent.v1.JobService/"
# Every JobService method, by name; one that is not here needs admin.
METHOD_ROLES = {
    "GetJob": Role.VIEWER,
    "ListJobs": Role.VIEWER,
    "GetExecution": Role.VIEWER,
    "ListExecutions": Role.VIEWER,
    "WatchExecution": Role.VIEWER,
    "StreamLogs": Role.VIEWER,
    "StreamLogBatches": Role.VIEWER,
    "DownloadLogs": Role.VIEWER,
    "WatchEvents": Role.VIEWER,
    "GetNodeInfo": Role.VIEWER,
    "TriggerJob": Role.OPERATOR,
    "CancelExecution": Role.OPERATOR,
    "SuspendJob": Role.OPERATOR,
    "ResumeJob": Role.OPERATOR,
    "RegisterJob": Role.ADMIN,
    "UnregisterJob": Role.ADMIN,
    "PruneImages": Role.ADMIN,
}
OPEN_PREFIXES = (f"/{health.SERVICE_NAME}/",)
VIEWER_PREFIXES = (
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
)


def required_role(method: str) -> Role | None:
    """The role a method needs (None: open to all); admin for any method not named."""
    if method.startswith(OPEN_PREFIXES):
        return None
    if method.startswith(VIEWER_PREFIXES):
        return Role.VIEWER
    if method.startswith(SERVICE_PREFIX):
        return METHOD_ROLES.get(method.removeprefix(SERVICE_PREFIX), Role.ADMIN)
    return Role.ADMIN


@dataclass(frozen=True)
class Caller:
    """Who a token belongs to."""

    name: str
    role: Role


class TokenTable:
    """The known tokens, by the SHA-256 of each (tokens are never kept in the clear)."""

    def __init__(self, entries: Mapping[str, Caller], show_env_to_viewers: bool = False) -> None:
        self._entries = dict(entries)
        # Whether viewers see env values (by default they see the names only).
        self.show_env_to_viewers = show_env_to_viewers

    @classmethod
    def load(cls, path: Path, show_env_to_viewers: bool = False) -> TokenTable:
        """Reads a tokens file; raises InvalidSpec naming the bad entry."""
        try:
            document = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise InvalidSpec("tokens_file", f"cannot read {path}: {error}") from None
        items = document.get("tokens") if isinstance(document, dict) else None
        if not isinstance(items, list) or not items:
            raise InvalidSpec("tokens_file", "must have a non-empty list `tokens`")
        entries: dict[str, Caller] = {}
        for index, item in enumerate(items):
            where = f"tokens[{index}]"
            if not isinstance(item, dict):
                raise InvalidSpec(where, "must be a mapping with name, role and token or sha256")
            try:
                role = Role[str(item.get("role", "")).upper()]
            except KeyError:
                raise InvalidSpec(f"{where}.role", "must be viewer, operator or admin") from None
            digest = _digest_of(item, where)
            entries[digest] = Caller(str(item.get("name", where)), role)
        return cls(entries, show_env_to_viewers)

    def caller(self, token: str) -> Caller | None:
        """Who holds `token`, or None."""
        presented = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for digest, caller in self._entries.items():
            # Compare with every entry in constant time, so timing tells nothing.
            if hmac.compare_digest(digest, presented):
                found = caller
        return found


def _digest_of(item: Mapping[str, Any], where: str) -> str:
    token, digest = item.get("token"), item.get("sha256")
    if (token is None) == (digest is None):
        raise InvalidSpec(where, "needs exactly one of token and sha256")
    if token is not None:
        if not isinstance(token, str) or len(token) < 16:
            raise InvalidSpec(f"{where}.token", "must be a string of at least 16 characters")
        return hashlib.sha256(token.encode()).hexdigest()
    if not isinstance(digest, str) or len(digest) != 64:
        raise InvalidSpec(f"{where}.sha256", "must be 64 hex digits")
    return digest.lower()


def bearer_token(metadata: Any) -> str | None:
    """The token of an `authorization: Bearer <token>` header, if any."""
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None


if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.aio.ServerInterceptor


class TokenAuth(_Interceptor):
    """Answers UNAUTHENTICATED without a known token, PERMISSION_DENIED below the role."""

    def __init__(self, tokens: TokenTable) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        method: str = details.method
        needed = required_role(method)
        handler = await continuation(details)
        if handler is None:
            return handler
        token = bearer_token(details.invocation_metadata)
        caller = None if token is None else self._tokens.caller(token)
        if needed is None:
            # Open to all; a known token still names its caller, whose stream slots a
            # health watch takes rather than those all anonymous callers share.
            return handler if caller is None else _as_caller(handler, caller.name, False)
        if caller is None:
            missing = "a bearer token is required" if token is None else "unknown token"
            return _refusal(handler, Unauthenticated(missing))
        if caller.role < needed:
            log.info("refused %s to %s (role %s)", method, caller.name, caller.role.name.lower())
            return _refusal(
                handler,
                PermissionDenied(
                    f"{method.rsplit('/', 1)[-1]} needs role {needed.name.lower()}; "
                    f"{caller.name} has {caller.role.name.lower()}"
                ),
            )
        redact = caller.role is Role.VIEWER and not self._tokens.show_env_to_viewers
        return _as_caller(handler, caller.name, redact)


def _as_caller(handler: Handler, name: str, redact: bool) -> Handler:
    """`handler` run with the caller's token name known (agent.api.identity), and its
    responses' env values redacted when `redact`."""
    if handler.request_streaming:
        return handler

    def response(message: Any) -> Any:
        return redacted(message) if redact else message

    if handler.response_streaming:
        stream: Any = handler.unary_stream

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            TOKEN_NAME.set(name)
            async for message in stream(request, context):
                yield response(message)

        return grpc.unary_stream_rpc_method_handler(
            streaming,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    unary: Any = handler.unary_unary

    async def single(request: Any, context: Any) -> Any:
        TOKEN_NAME.set(name)
        return response(await unary(request, context))

    return grpc.unary_unary_rpc_method_handler(
        single,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _refusal(handler: Handler, error: AgentError) -> Handler:
    """A handler of the same shape as `handler` that only aborts with `error`."""
    status = to_status(error)

    async def abort(request: Any, context: Any) -> None:
        # abort_with_status is missing from the aio context's stubs.
        await context.abort_with_status(status)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        abort,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
