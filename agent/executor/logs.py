"""Reading an attempt's log file: from the start or the tail, and following it to the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
    while True:
        finished = ended.is_set()
        chunk, offset = _read_from(path, offset)
        data = pending + chunk
        *complete, pending = data.split(b"\n")
        lines = [line for raw in complete if (line := parse_line(raw)) and query.wants(line)]
        if first and query.tail_lines > 0:
            lines = list(deque(lines, maxlen=query.tail_lines))
        first = False
        for line in lines:
            yield line
        if finished or not query.follow:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ended.wait(), FOLLOW_POLL_SECONDS)


def _read_from(path: Path, offset: int) -> tuple[bytes, int]:
    try:
        with path.open("rb") as file:
            file.seek(offset)
            data = file.read()
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)
