"""Reading the CRI log format that conmon writes: `RFC3339Nano stdout|stderr P|F message`."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

from agent.domain import NANOS_PER_SECOND, LogBatch, LogLine, LogStream

STREAMS = {stream.value: stream for stream in LogStream}
# Seconds since the epoch of the whole-second part of recent timestamps: a log's lines share
# a few of them, and the parse of each is the costly part of a timestamp.
_SECONDS: dict[str, int] = {}
_SECONDS_KEPT = 4096


def parse_line(raw: bytes) -> LogLine | None:
    """Parses one line of a CRI log file (without its newline); None when it is malformed."""
    parts = raw.split(b" ", 3)
    if len(parts) < 3:
        return None
    stamp, stream, tag = parts[0], parts[1], parts[2]
    message = parts[3] if len(parts) == 4 else b""
    try:
        time = parse_timestamp(stamp.decode())
        log_stream = LogStream(stream.decode())
    except ValueError:
        return None
    return LogLine(
        time=time,
        stream=log_stream,
        message=message.decode(errors="replace"),
        partial=tag == b"P",
    )


def parse_timestamp(text: str) -> datetime:
    """Parses RFC 3339 with nanoseconds (Python keeps microseconds)."""
    head, dot, rest = text.partition(".")
    if not dot:
        return datetime.fromisoformat(text)
    digits = ""
    index = 0
    while index < len(rest) and rest[index].isdigit():
        digits += rest[index]
        index += 1
    zone = rest[index:]
    if zone == "Z":
        zone = "+00:00"
    return datetime.fromisoformat(f"{head}.{digits[:6].ljust(6, '0')}{zone}")


def parse_records(
    data: bytes,
    *,
    cut: int = 0,
    stream: LogStream | None = None,
    since: int | None = None,
) -> LogBatch:
    """The lines of `data`, whole records each ending with a newline, that are of `stream`
    (any when None) and not older than `since` (nanoseconds since the epoch). The first
    record's message loses its first `cut` bytes. Malformed records are skipped."""
    batch = LogBatch()
    if cut and data:
        first = data.find(b"\n") + 1
        fields = data[: first - 1].split(b" ", 3)
        if len(fields) == 4:
            data = b" ".join([*fields[:3], fields[3][cut:]]) + b"\n" + data[first:]
    messages, times, streams, partial = batch.messages, batch.times, batch.streams, batch.partial
    for raw in data.decode(errors="replace").split("\n"):
        parts = raw.split(" ", 3)
        if len(parts) < 3:
            continue
        kind = STREAMS.get(parts[1])
        if kind is None or (stream is not None and kind is not stream):
            continue
        try:
            nanos = stamp_nanos(parts[0])
        except ValueError:
            continue
        if since is not None and nanos < since:
            continue
        if parts[2] == "P":
            partial.append(len(messages))
        messages.append(parts[3] if len(parts) == 4 else "")
        times.append(nanos)
        streams.append(kind)
    return batch


def is_shown(raw: bytes, stream: LogStream | None = None, since: int | None = None) -> bool:
    """Whether parse_records keeps the record `raw` (one record, without its newline)."""
    parts = raw.split(b" ", 3)
    if len(parts) < 3:
        return False
    kind = STREAMS.get(parts[1].decode(errors="replace"))
    if kind is None or (stream is not None and kind is not stream):
        return False
    try:
        nanos = stamp_nanos(parts[0].decode(errors="replace"))
    except ValueError:
        return False
    return since is None or nanos >= since


def stamp_nanos(stamp: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp; ValueError if it is none.

    conmon writes UTC with nine fractional digits (`...T06:55:29.453965178+00:00`): that
    form is read digit for digit; any other goes through parse_timestamp (microseconds).
    """
    if len(stamp) >= 30 and stamp[19] == "." and stamp[29:] in ("Z", "+00:00"):
        fraction = stamp[20:29]
        if fraction.isdigit():
            return _whole_seconds(stamp[:19]) * NANOS_PER_SECOND + int(fraction)
    return datetime_nanos(parse_timestamp(stamp))


def datetime_nanos(moment: datetime) -> int:
    """Nanoseconds since the epoch of `moment` (UTC when it has no zone)."""
    seconds = calendar.timegm(moment.utctimetuple())
    return seconds * NANOS_PER_SECOND + moment.microsecond * 1000


def _whole_seconds(text: str) -> int:
    seconds = _SECONDS.get(text)
    if seconds is None:
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        seconds = int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())
        _SECONDS[text] = seconds
    return seconds
