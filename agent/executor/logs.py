"""Reading an attempt's log file: from the start or the tail, and following it to the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from agent.domain import LogLine, LogStream
from agent.errors import OutOfRange
from agent.runtime.crilog import parse_line

FOLLOW_POLL_SECONDS = 0.05
CHUNK_SIZE = 1 << 16
# The largest chunk of a download: big enough that a message's cost is spread over a
# megabyte (2 MiB measured no faster), well under gRPC's default 4 MiB message limit.
DOWNLOAD_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class LogChunk:
    """Whole records of a log file, as stored, from byte `offset` of it."""

    data: bytes
    offset: int
    # Older output was dropped before this chunk (the size cap).
    truncated: bool = False


@dataclass(frozen=True)
class LogQuery:
    """Which lines a reader wants."""

    follow: bool = False
    tail_lines: int = 0
    stream: LogStream | None = None
    since: datetime | None = None
    # The attempt's size cap: output older than the newest max_bytes is not shown.
    max_bytes: int | None = None

    def wants(self, line: LogLine) -> bool:
        """True when the line passes the stream and time filters."""
        if self.stream is not None and line.stream is not self.stream:
            return False
        return self.since is None or line.time >= self.since


async def read_log(path: Path, query: LogQuery, ended: asyncio.Event) -> AsyncIterator[LogLine]:
    """Yields the file's lines; with follow, keeps reading until `ended` is set and drained.

    `ended` must be set only once the writer has finished the file (the container's
    monitor has exited), so the final read sees every line.
    """
    offset = 0
    pending = b""
    first = True
    truncated = False
    size = _size(path)
    if query.max_bytes is not None and size > query.max_bytes:
        # Only the newest max_bytes are kept: start at the first whole line within them.
        offset, truncated = size - query.max_bytes, True
        head, _ = _read_from(path, offset, limit=query.max_bytes)
        newline = head.find(b"\n")
        offset += newline + 1 if newline >= 0 else len(head)
    while True:
        finished = ended.is_set()
        if _size(path) < offset:
            # The monitor rotated the file under its size cap: read the new one from its start.
            offset, pending, truncated = 0, b"", True
        chunk, offset = _read_from(path, offset)
        data = pending + chunk
        *complete, pending = data.split(b"\n")
        lines = [line for raw in complete if (line := parse_line(raw)) and query.wants(line)]
        if first and query.tail_lines > 0:
            lines = list(deque(lines, maxlen=query.tail_lines))
        first = False
        for line in lines:
            if truncated:
                line = replace(line, truncated=True)
                truncated = False
            yield line
        if finished or not query.follow:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), FOLLOW_POLL_SECONDS)


async def read_log_chunks(
    path: Path, start: int, follow: bool, ended: asyncio.Event, max_bytes: int | None = None
) -> AsyncIterator[LogChunk]:
    """Yields the file from byte `start` (or the next record after it) in chunks of whole
    records; with follow, until `ended` is set and the file drained (as for read_log).

    Only the newest `max_bytes` are read when the file is over the cap. OutOfRange when
    `start` is past the end of the file.
    """
    size = _size(path)
    if start > size:
        raise OutOfRange(f"offset: {start} is past the end of the log ({size} bytes)")
    offset, truncated = start, False
    if max_bytes is not None and size - offset > max_bytes:
        offset, truncated = size - max_bytes, True
    offset = _next_record(path, offset)
    while True:
        finished = ended.is_set()
        if _size(path) < offset:
            offset, truncated = 0, True  # rotated under the size cap, as in read_log
        data = _read_records(path, offset)
        if data:
            yield LogChunk(data, offset, truncated)
            offset, truncated = offset + len(data), False
            continue
        if finished or not follow:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), FOLLOW_POLL_SECONDS)


def _read_records(path: Path, offset: int) -> bytes:
    """Up to DOWNLOAD_CHUNK_BYTES of whole records from `offset` (b"" when there is none)."""
    data, _ = _read_from(path, offset, limit=DOWNLOAD_CHUNK_BYTES)
    end = data.rfind(b"\n") + 1
    if end == 0 and len(data) == DOWNLOAD_CHUNK_BYTES:
        return data  # a record longer than a chunk (conmon's are not) goes in pieces
    return data if end == len(data) else data[:end]


def _next_record(path: Path, offset: int) -> int:
    """`offset` when a record starts there, else where the next one starts (or the end)."""
    if offset == 0:
        return 0
    data, _ = _read_from(path, offset - 1, limit=DOWNLOAD_CHUNK_BYTES)
    while data and data[:1] != b"\n":
        newline = data.find(b"\n")
        if newline >= 0:
            return offset + newline
        offset += len(data)
        data, _ = _read_from(path, offset - 1, limit=DOWNLOAD_CHUNK_BYTES)
    return offset


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int, limit: int = -1) -> tuple[bytes, int]:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read(limit)
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)
