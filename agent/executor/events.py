"""In-process fan-out of recorded events to watchers."""

from __future__ import annotations

import asyncio
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

    def subscribe_node(self, capacity: int) -> NodeSubscription:
        """A subscription to every event of the node, ended when it falls `capacity` behind."""
        subscription = NodeSubscription(capacity)
        self._node_watchers.add(subscription)
        if self.stopped:
            subscription.queue.put_nowait(None)
        return subscription

    def unsubscribe_node(self, subscription: NodeSubscription) -> None:
        """Stops delivering to a node subscription."""
        self._node_watchers.discard(subscription)

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


class NodeSubscription:
    """A bounded queue of node events; `overflowed` once it could not keep up."""

    def __init__(self, capacity: int) -> None:
        self.queue: asyncio.Queue[NodeEvent | None] = asyncio.Queue()
        self._capacity = capacity
        self.overflowed = False

    def offer(self, event: NodeEvent) -> bool:
        """Queues the event; False (and a wake-up) when the consumer is too far behind."""
        if self.queue.qsize() >= self._capacity:
            self.overflowed = True
            self.queue.put_nowait(None)
            return False
        self.queue.put_nowait(event)
        return True
