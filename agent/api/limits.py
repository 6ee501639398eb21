"""The API's bounds: open server streams, node-wide and per caller identity, and the
size of a request.

A watch or a followed log holds a stream for as long as the caller likes; without a bound,
one caller could open enough of them to starve the node's memory and event loop for
everyone else. A stream takes a slot when its handler starts and gives it back when the
call ends, however it ends (the caller cancels, an error, the agent stops).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType

from agent.errors import ResourceExhausted

DEFAULT_MAX_STREAMS = 1024
DEFAULT_MAX_STREAMS_PER_CALLER = 64
# gRPC's own default is 4 MiB; no request of this API needs more than a large deployment
# document (a dispatch payload is at most 16 KiB).
DEFAULT_MAX_REQUEST_BYTES = 1024**2


@dataclass(frozen=True)
class ApiLimits:
    """How many server streams may be open at once (on the node, and per caller), and the
    largest request message the server accepts (bigger ones get RESOURCE_EXHAUSTED)."""

    streams: int = DEFAULT_MAX_STREAMS
    streams_per_caller: int = DEFAULT_MAX_STREAMS_PER_CALLER
    request_bytes: int = DEFAULT_MAX_REQUEST_BYTES


@dataclass
class StreamSlots:
    """The open streams, counted per caller identity (agent.api.identity)."""

    limits: ApiLimits = field(default_factory=ApiLimits)
    _open: Counter[str] = field(default_factory=Counter)
    _total: int = 0

    @property
    def open(self) -> int:
        """Streams open now, on the whole node."""
        return self._total

    def open_by(self, caller: str) -> int:
        """Streams `caller` has open now."""
        return self._open[caller]

    def take(self, caller: str, rpc: str) -> StreamSlot:
        """A slot for a stream of `caller`; ResourceExhausted naming the limit when full."""
        if self.open >= self.limits.streams:
            raise ResourceExhausted(
                f"{rpc}: the node has {self.limits.streams} streams open, its limit "
                "(--max-streams); try again when one ends"
            )
        if self._open[caller] >= self.limits.streams_per_caller:
            raise ResourceExhausted(
                f"{rpc}: this caller has {self.limits.streams_per_caller} streams open, "
                "its limit (--max-streams-per-caller); close one first"
            )
        self._open[caller] += 1
        self._total += 1
        return StreamSlot(self, caller)

    def _give_back(self, caller: str) -> None:
        self._total -= 1
        self._open[caller] -= 1
        if self._open[caller] <= 0:
            del self._open[caller]


class StreamSlot:
    """One taken slot; released once, by whichever comes first: the end of its `with`
    block or the end of the call (release() is idempotent)."""

    def __init__(self, slots: StreamSlots, caller: str) -> None:
        self._slots = slots
        self._caller = caller
        self._held = True

    def release(self, *_: object) -> None:
        """Gives the slot back (a no-op after the first time)."""
        if self._held:
            self._held = False
            self._slots._give_back(self._caller)

    def __enter__(self) -> StreamSlot:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
