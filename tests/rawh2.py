"""A client that opens gRPC calls and then reads nothing: one HTTP/2 connection that gives
the server a stream window of 0, so that the server's first message of each call never
leaves it. It plays a caller who holds the agent's sends up for as long as it likes.
"""

from __future__ import annotations

import socket
import struct

DATA, HEADERS, SETTINGS = 0, 1, 4
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE = 2, 4
MAX_FRAME = 16384


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _header(name: str, value: str) -> bytes:
    """A literal header field, not indexed (HPACK), for names and values under 127 bytes."""
    encoded = [text.encode() for text in (name, value)]
    assert all(len(text) < 127 for text in encoded)
    return b"\x00" + b"".join(bytes([len(text)]) + text for text in encoded)


class SilentCaller:
    """One connection to `address` (HOST:PORT) that never lets the server send a byte of a
    stream's messages."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._socket = socket.create_connection((host, int(port)), timeout=10)
        self._socket.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        settings = struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 0)
        settings += struct.pack(">HI", SETTINGS_ENABLE_PUSH, 0)
        self._socket.sendall(_frame(SETTINGS, 0, 0, settings))
        # The server's own settings are acknowledged unread.
        self._socket.sendall(_frame(SETTINGS, ACK, 0, b""))
        self._next_stream = 1

    def call(self, path: str, message: bytes, token: str = "") -> None:
        """Opens a call of `path` (/package.Service/Method) with one request message."""
        stream = self._next_stream
        self._next_stream += 2
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if token:
            headers.append(("authorization", f"Bearer {token}"))
        block = b"".join(_header(name, value) for name, value in headers)
        self._socket.sendall(_frame(HEADERS, END_HEADERS, stream, block))
        body = b"\x00" + struct.pack(">I", len(message)) + message
        for start in range(0, len(body), MAX_FRAME):
            flags = END_STREAM if start + MAX_FRAME >= len(body) else 0
            self._socket.sendall(_frame(DATA, flags, stream, body[start : start + MAX_FRAME]))

    def close(self) -> None:
        """Drops the connection (the server ends its calls)."""
        self._socket.close()

    def __enter__(self) -> SilentCaller:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
