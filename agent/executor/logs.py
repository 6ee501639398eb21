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
from agent.runtime.crilog import parse_line

FOLLOW_POLL_SECONDS = 0.05
CHUNK_SIZE = 1 << 16


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
