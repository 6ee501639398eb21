"""Reading an attempt's log file: from the start or the tail, and following it to the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from agent.domain import LogBatch, LogLine, LogStream
from agent.errors import OutOfRange
from agent.runtime.crilog import datetime_nanos, is_shown, parse_records

FOLLOW_POLL_SECONDS = 0.05
CHUNK_SIZE = 1 << 16
# What one read of a log takes into memory, whatever the file's size; its lines are parsed
# in one turn of the loop (about 6 ms for lines of two bytes).
READ_BYTES = 1 << 18
# The text of one batch of lines: about what a message of the batched stream carries.
BATCH_CHARS = 1 << 16
# The largest chunk of a download: big enough that a message's cost is spread over a
# megabyte (2 MiB measured no faster), well under gRPC's default 4 MiB message limit.
DOWNLOAD_CHUNK_BYTES = 1 << 20


# The monitor's bound on a log file, in multiples of the output cap. A record adds about 40
# bytes (timestamp, stream, tag) to its line, so 16 times the cap holds the cap's worth of
# output for lines of 3 bytes or more; past the bound conmon starts the file afresh.
LOG_FILE_FACTOR = 16
# The records a search of a log file reads between two turns of the loop (about 0.4 ms of
# CPU for records of short lines).
SCAN_RECORDS = 256


def log_file_limit(cap: int) -> int:
    """The most bytes the monitor lets a log file of an attempt capped at `cap` hold."""
    return LOG_FILE_FACTOR * cap


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


@dataclass(frozen=True)
class CapStart:
    """Where the newest `cap` bytes of a container's output begin in its log file."""

    # The first record holding kept output, and how many leading bytes of its message are
    # older than the cap (0 when the record is kept whole).
    offset: int = 0
    cut: int = 0
    # The first record kept whole: where a download of whole records starts.
    whole: int = 0
    # Older output was dropped.
    truncated: bool = False


@dataclass
class _CapSearch:
    """A search for the cap's start under way, and how many readers wait for it."""

    future: asyncio.Future[CapStart]
    waiting: int = 0


# The searches for the cap's start kept, by file (device, inode, size, modification time)
# and cap: the start once found, a search still under way before.
CAP_SEARCHES_KEPT = 64
CapKey = tuple[int, int, int, int, int]
_cap_searches: OrderedDict[CapKey, CapStart | _CapSearch] = OrderedDict()


async def cap_start(path: Path, cap: int | None) -> CapStart:
    """Finds the newest `cap` bytes of output (messages and the newlines that end full
    lines, as the container wrote them; the records' timestamps and tags do not count).

    A search is kept for the file as it was (its size and modification time), and shared
    by the readers that come meanwhile: a finished log's never changes, and each reader
    of it would otherwise search the whole of it again. A search that no reader waits for
    any more stops.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        return CapStart()
    # A record's output is never longer than the record: a file within the cap is whole.
    if cap is None or stat.st_size <= cap:
        return CapStart()
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, cap)
    found = _cap_searches.get(key)
    if isinstance(found, CapStart):
        _cap_searches.move_to_end(key)
        return found
    if found is None or found.future.get_loop() is not asyncio.get_running_loop():
        found = _CapSearch(asyncio.ensure_future(_search_cap_start(path, stat.st_size, cap)))
        _keep_cap_search(key, found)
    found.waiting += 1
    try:
        # Shielded: a reader that goes away leaves the search to the others.
        start = await asyncio.shield(found.future)
    except BaseException:
        found.waiting -= 1
        if found.future.done() or found.waiting == 0:
            found.future.cancel()
            if _cap_searches.get(key) is found:
                del _cap_searches[key]
        raise
    found.waiting -= 1
    _keep_cap_search(key, start)
    return start


def _keep_cap_search(key: CapKey, search: CapStart | _CapSearch) -> None:
    _cap_searches[key] = search
    _cap_searches.move_to_end(key)
    if len(_cap_searches) > CAP_SEARCHES_KEPT:
        _cap_searches.popitem(last=False)


async def _search_cap_start(path: Path, size: int, cap: int) -> CapStart:
    kept = 0
    async for offset, raw in _records_backwards_turns(path, size):
        output = _output_bytes(raw)
        if kept + output <= cap:
            kept += output
            continue
        whole = offset + len(raw) + 1
        room = cap - kept
        if room == 0:
            return CapStart(whole, 0, whole, truncated=True)
        return CapStart(offset, output - room, whole, truncated=True)
    return CapStart()


async def tail_start(
    path: Path, end: int, begin: CapStart, lines: int, stream: LogStream | None, since: int | None
) -> int:
    """Where the last `lines` records that a reader is shown (of `stream`, not older than
    `since`) begin, among the complete records before byte `end` and not older than the
    cap (`begin`). Found newest first, reading the file backwards a chunk at a time: a
    tail of any length holds no more of the log in memory than that."""
    shown = 0
    async for offset, raw in _records_backwards_turns(path, end):
        if offset < begin.offset:
            break
        if is_shown(raw, stream, since):
            shown += 1
            if shown == lines:
                return offset
    return begin.offset


def _output_bytes(raw: bytes) -> int:
    """The container's bytes in one record: its message, and a newline if the line is full."""
    parts = raw.split(b" ", 3)
    if len(parts) < 3:
        return 0
    message = parts[3] if len(parts) == 4 else b""
    return len(message) + (parts[2] != b"P")


async def _records_backwards_turns(path: Path, size: int) -> AsyncIterator[tuple[int, bytes]]:
    """_records_backwards, giving the loop back every SCAN_RECORDS records: a search of a
    long log (its cap, a tail) never holds up other calls for more than a few of them."""
    for count, record in enumerate(_records_backwards(path, size), 1):
        if count % SCAN_RECORDS == 0:
            await asyncio.sleep(0)
        yield record


def _records_backwards(path: Path, size: int) -> Iterator[tuple[int, bytes]]:
    """The file's complete records, newest first, each with its offset (an unfinished last
    record, still being written, is left out)."""
    with path.open("rb") as file:
        # `buffer` holds the file from `start` on, up to the newest record not yet yielded.
        start, buffer, ends_known = size, b"", False
        while start > 0:
            step = min(CHUNK_SIZE, start)
            start -= step
            file.seek(start)
            buffer = file.read(step) + buffer
            if not ends_known:
                last = buffer.rfind(b"\n")
                if last < 0:
                    continue
                buffer, ends_known = buffer[: last + 1], True
            stop = len(buffer)
            while (previous := buffer.rfind(b"\n", 0, stop - 1)) >= 0:
                yield start + previous + 1, buffer[previous + 1 : stop - 1]
                stop = previous + 1
            buffer = buffer[:stop]
        if ends_known and buffer:
            yield 0, buffer[:-1]


async def read_log(path: Path, query: LogQuery, ended: asyncio.Event) -> AsyncIterator[LogLine]:
    """read_log_batches, one line at a time."""
    async for batch in read_log_batches(path, query, ended):
        for line in batch.lines():
            yield line


async def read_log_batches(
    path: Path, query: LogQuery, ended: asyncio.Event, max_chars: int = BATCH_CHARS
) -> AsyncIterator[LogBatch]:
    """Yields the file's lines in batches of about `max_chars` characters; with follow,
    keeps reading until `ended` is set and the file drained.

    `ended` must be set only once the writer has finished the file (the container's
    monitor has exited), so the final read sees every line. Only the newest
    `query.max_bytes` of output are read; the first line read then says it was truncated.
    A tail is the last `query.tail_lines` lines as the reader comes (then, with follow,
    every new one). Memory holds one read of the file (READ_BYTES), whatever the tail, and
    the loop is given back between reads and during the search for the cap and the tail.
    """
    begin = await cap_start(path, query.max_bytes)
    offset, cut, truncated = begin.offset, begin.cut, begin.truncated
    since = None if query.since is None else datetime_nanos(query.since)
    pending = b""
    # Without follow, a tail ends where the file ended as the reader came.
    stop: int | None = None
    if query.tail_lines:
        end = _size(path)
        start = await tail_start(path, end, begin, query.tail_lines, query.stream, since)
        if start != offset:
            offset, cut = start, 0
        stop = None if query.follow else end
    while True:
        finished = ended.is_set()
        if _size(path) < offset:
            # The monitor rotated the file under its size cap: read the new one from its start.
            offset, pending, cut, truncated, stop = 0, b"", 0, True, None
        limit = READ_BYTES if stop is None else min(READ_BYTES, stop - offset)
        chunk, offset = _read_from(path, offset, limit=limit)
        data = pending + chunk
        end = data.rfind(b"\n") + 1
        batch = parse_records(data[:end], cut=cut, stream=query.stream, since=since)
        pending = data[end:]
        cut = cut if end == 0 else 0
        for piece in batch.pieces(max_chars):
            piece.truncated, truncated = truncated, False
            yield piece
        if stop is not None and offset >= stop:
            return
        if chunk and len(chunk) == limit:
            # More to read: other calls go first (a reader that is shown nothing of a
            # chunk sends nothing that would wait).
            await asyncio.sleep(0)
            continue
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
    begin = await cap_start(path, max_bytes)
    if begin.truncated and offset < begin.whole:
        offset, truncated = begin.whole, True
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
