"""Which listeners check bearer tokens.

A unix socket always does: its file mode says who may connect, the token what they may
do. TCP does when a tokens file is configured; without one, TCP callers are authenticated
by their client certificate (mTLS) or, with --insecure, by nothing. When one agent serves
both kinds, the choice is made per call, from the transport the call came on.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from agent.api.auth import Handler, TokenAuth, TokenTable

if TYPE_CHECKING:  # the stubs make these generic; the runtime classes are not
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor

# How grpc names the peer of a TCP connection; a unix socket's peer is "unix:...".
TCP_PEERS = ("ipv4:", "ipv6:")


@dataclass(frozen=True)
class Listeners:
    """What a server listens on, as far as checking tokens goes."""

    has_tcp: bool = True
    has_socket: bool = False
    # False when TCP callers are authenticated otherwise (mTLS) or not at all (--insecure).
    tcp_needs_token: bool = True


def interceptors(tokens: TokenTable, listeners: Listeners) -> Sequence[_Interceptor]:
    """The interceptors a server with these listeners needs."""
    if listeners.tcp_needs_token or not listeners.has_tcp:
        return [TokenAuth(tokens)]
    if not listeners.has_socket:
        return []
    return [SocketTokenAuth(tokens)]


class SocketTokenAuth(_Interceptor):
    """Checks tokens on unix-socket calls; lets TCP calls through unchecked."""

    def __init__(self, tokens: TokenTable) -> None:
        self._auth = TokenAuth(tokens)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return handler

        async def found(_: grpc.HandlerCallDetails) -> Handler:
            return handler

        checked = await self._auth.intercept_service(found, details)
        if checked is handler:
            return handler
        return _by_transport(tcp=handler, socket=checked)


def _by_transport(tcp: Handler, socket: Handler) -> Handler:
    """A handler of `tcp`'s shape that runs `tcp`'s behaviour for TCP peers and `socket`'s
    for every other peer."""

    def behaviour(handler: Handler) -> Callable[..., Any]:
        kind = _KINDS[(handler.request_streaming, handler.response_streaming)][0]
        method: Callable[..., Any] = getattr(handler, kind)
        return method

    on_tcp, on_socket = behaviour(tcp), behaviour(socket)

    def chosen(context: grpc.aio.ServicerContext[Any, Any]) -> Callable[..., Any]:
        return on_tcp if context.peer().startswith(TCP_PEERS) else on_socket

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return await chosen(context)(request, context)

    async def streaming(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        result = chosen(context)(request, context)
        if inspect.isasyncgen(result):
            items: AsyncIterator[Any] = result
            async for item in items:
                yield item
        else:
            # A behaviour that writes with context.write (or aborts) returns no iterator.
            await result

    _, make = _KINDS[(tcp.request_streaming, tcp.response_streaming)]
    return make(
        streaming if tcp.response_streaming else unary,
        request_deserializer=tcp.request_deserializer,
        response_serializer=tcp.response_serializer,
    )


_KINDS: dict[tuple[bool, bool], tuple[str, Callable[..., Handler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}
