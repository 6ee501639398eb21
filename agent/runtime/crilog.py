"""Reading the CRI log format that conmon writes: `RFC3339Nano stdout|stderr P|F message`."""

from __future__ import annotations

from datetime import datetime

from agent.domain import LogLine, LogStream


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
