"""In-process fan-out of recorded events to watchers."""

from __future__ import annotations

import asyncio
import enum
from collections import defaultdict
from collections.abc import Callable

from agent.domain import ExecutionEvent, NodeEvent


class EventBus:
    """Delivers each published event to every subscriber of its execution.

    Publishing never blocks: queues are unbounded, and an execution produces at most a
    handful of events. Once stopped, every queue (and any later one) gets None: the agent
    is stopping and watchers should end.
    """

    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[asyncio.Queue[ExecutionEvent | None]]] = (
            defaultdict(set)
        )
        self._node_watchers: set[NodeSubscription] = set()
        self._listeners: list[Callable[[NodeEvent], None]] = []
        self.stopped = False

    def add_listener(self, listener: Callable[[NodeEvent], None]) -> None:
        """Calls `listener` with every event as it is published (it must not block)."""
        self._listeners.append(listener)

    def subscribe_node(self, capacity: int, quiet_seconds: float) -> NodeSubscription:
        """A subscription to every event of the node, ended when it falls `capacity` behind,
        that gives QUIET after each `quiet_seconds` without an event."""
        subscription = NodeSubscription(capacity, quiet_seconds)
        self._node_watchers.add(subscription)
        if self.stopped:
            subscription.queue.put_nowait(None)
        return subscription

    def unsubscribe_node(self, subscription: NodeSubscription) -> None:
        """Stops delivering to a node subscription."""
        self._node_watchers.discard(subscription)
        subscription.close()

    def subscribe(self, execution_id: str) -> asyncio.Queue[ExecutionEvent | None]:
        """Returns a queue that receives the execution's events from now on."""
        queue: asyncio.Queue[ExecutionEvent | None] = asyncio.Queue()
        self._subscribers[execution_id].add(queue)
        if self.stopped:
            queue.put_nowait(None)
        return queue

    def stop(self) -> None:
        """Wakes every watcher with None: the agent is stopping."""
        self.stopped = True
        for queues in self._subscribers.values():
            for queue in queues:
                queue.put_nowait(None)
        for subscription in self._node_watchers:
            subscription.queue.put_nowait(None)

    def unsubscribe(self, execution_id: str, queue: asyncio.Queue[ExecutionEvent | None]) -> None:
        """Stops delivering to `queue`."""
        subscribers = self._subscribers.get(execution_id)
        if subscribers is not None:
            subscribers.discard(queue)
            if not subscribers:
                del self._subscribers[execution_id]

    def publish(self, event: NodeEvent) -> None:
        """Hands the event to every current subscriber of its execution and of the node."""
        for listener in self._listeners:
            listener(event)
        if isinstance(event, ExecutionEvent):
            for queue in self._subscribers.get(event.execution.id, ()):
                queue.put_nowait(event)
        for subscription in list(self._node_watchers):
            if not subscription.offer(event):
                # A slow consumer never holds up the executor: it is cut off and resumes.
                self._node_watchers.discard(subscription)


class Quiet(enum.Enum):
    """What a node subscription gives after a quiet interval (a watch sends a bookmark)."""

    QUIET = "quiet"


QUIET = Quiet.QUIET


class NodeSubscription:
    """A bounded queue of node events; `overflowed` once it could not keep up.

    Quiet intervals are kept by one timer per subscription that re-arms itself for what is
    left of the interval, rather than a timeout around every wait: with 1,000 watchers, a
    timer made and cancelled per watcher per event cost more than handing out the event.
    """

    def __init__(self, capacity: int, quiet_seconds: float) -> None:
        self.queue: asyncio.Queue[NodeEvent | Quiet | None] = asyncio.Queue()
        self._capacity = capacity
        self.overflowed = False
        self._loop = asyncio.get_running_loop()
        self._quiet_seconds = quiet_seconds
        self._last_taken = self._loop.time()
        self._quiet_queued = False
        self._timer: asyncio.TimerHandle | None = self._loop.call_later(
            quiet_seconds, self._check_quiet
        )

    def offer(self, event: NodeEvent) -> bool:
        """Queues the event; False (and a wake-up) when the consumer is too far behind."""
        if self.queue.qsize() >= self._capacity:
            self.overflowed = True
            self.queue.put_nowait(None)
            return False
        self.queue.put_nowait(event)
        return True

    async def next(self) -> NodeEvent | Quiet | None:
        """The next item: an event, QUIET, or None when the subscription ended."""
        item = self.queue.get_nowait() if not self.queue.empty() else await self.queue.get()
        self._last_taken = self._loop.time()
        if item is QUIET:
            self._quiet_queued = False
        return item

    def close(self) -> None:
        """Stops the quiet timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_quiet(self) -> None:
        quiet_for = self._loop.time() - self._last_taken
        if quiet_for >= self._quiet_seconds:
            if not self._quiet_queued:
                self._quiet_queued = True
                self.queue.put_nowait(QUIET)
            quiet_for = 0.0
        self._timer = self._loop.call_later(self._quiet_seconds - quiet_for, self._check_quiet)
