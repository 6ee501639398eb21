"""In-process fan-out of recorded execution events to watchers."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from agent.domain import ExecutionEvent


class EventBus:
    """Delivers each published event to every subscriber of its execution.

    Publishing never blocks: queues are unbounded, and an execution produces at most a
    handful of events.
    """

    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[asyncio.Queue[ExecutionEvent]]] = defaultdict(set)

    def subscribe(self, execution_id: str) -> asyncio.Queue[ExecutionEvent]:
        """Returns a queue that receives the execution's events from now on."""
        queue: asyncio.Queue[ExecutionEvent] = asyncio.Queue()
        self._subscribers[execution_id].add(queue)
        return queue

    def unsubscribe(self, execution_id: str, queue: asyncio.Queue[ExecutionEvent]) -> None:
        """Stops delivering to `queue`."""
        subscribers = self._subscribers.get(execution_id)
        if subscribers is not None:
            subscribers.discard(queue)
            if not subscribers:
                del self._subscribers[execution_id]

    def publish(self, event: ExecutionEvent) -> None:
        """Hands the event to every current subscriber of its execution."""
        for queue in self._subscribers.get(event.execution.id, ()):
            queue.put_nowait(event)
