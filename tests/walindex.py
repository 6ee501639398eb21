"""What a SQLite database's write-ahead log holds, read from its wal-index (the -shm file)
without a connection of the test's own, which would change what it measures.

The layout is SQLite's documented wal-index header (sqlite.org/walformat.html), in the
machine's byte order: mxFrame at byte 16 of the header, nBackfill at byte 96.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

HEADER_BYTES = 136


@dataclass(frozen=True)
class WalState:
    """Frames in the log since it last started again, and how many a checkpoint copied."""

    frames: int
    checkpointed: int


def wal_state(database: Path) -> WalState:
    """The log's state of `database` (a database in WAL mode, open somewhere)."""
    header = database.with_name(database.name + "-shm").read_bytes()[:HEADER_BYTES]
    (frames,) = struct.unpack_from("=I", header, 16)
    (checkpointed,) = struct.unpack_from("=I", header, 96)
    return WalState(frames, checkpointed)
