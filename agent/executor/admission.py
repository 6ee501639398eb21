"""Admission: which pending executions may start, under node-wide and per-job limits."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class _Waiting:
    execution_id: str
    job_name: str
    job_limit: int | None


class Admission:
    """A FIFO queue of pending executions and the slots held by active ones.

    An execution holds a slot from the moment it is admitted until its outcome is recorded
    (removing its exited container does not hold the slot). A waiting
    execution whose job is at its own limit does not hold up later ones of other jobs.
    """

    def __init__(self, node_limit: int) -> None:
        self._node_limit = node_limit
        self._queue: list[_Waiting] = []
        self._holders: dict[str, str] = {}
        self._per_job: Counter[str] = Counter()
        self._waiting_per_job: Counter[str] = Counter()

    def enqueue(self, execution_id: str, job_name: str, job_limit: int | None) -> None:
        """Puts an execution at the end of the queue."""
        self._queue.append(_Waiting(execution_id, job_name, job_limit))
        self._waiting_per_job[job_name] += 1

    def withdraw(self, execution_id: str) -> bool:
        """Takes a waiting execution out of the queue; False if it was not waiting."""
        for index, waiting in enumerate(self._queue):
            if waiting.execution_id == execution_id:
                self._dequeue(index)
                return True
        return False

    def _dequeue(self, index: int) -> None:
        job_name = self._queue.pop(index).job_name
        self._waiting_per_job[job_name] -= 1
        if not self._waiting_per_job[job_name]:
            del self._waiting_per_job[job_name]

    def occupy(self, execution_id: str, job_name: str) -> None:
        """Gives an execution a slot without queueing (one that was active before a restart)."""
        self._holders[execution_id] = job_name
        self._per_job[job_name] += 1

    def release(self, execution_id: str) -> None:
        """Frees the slot of an execution that ended (no-op if it held none)."""
        job_name = self._holders.pop(execution_id, None)
        if job_name is not None:
            self._per_job[job_name] -= 1

    def admit(self) -> list[str]:
        """Removes from the queue, in order, every execution that may start now."""
        admitted: list[str] = []
        index = 0
        while index < len(self._queue) and len(self._holders) < self._node_limit:
            waiting = self._queue[index]
            if (
                waiting.job_limit is not None
                and self._per_job[waiting.job_name] >= waiting.job_limit
            ):
                index += 1
                continue
            self._dequeue(index)
            self.occupy(waiting.execution_id, waiting.job_name)
            admitted.append(waiting.execution_id)
        return admitted

    def position(self, execution_id: str) -> int:
        """1 for the head of the queue, 0 when the execution is not waiting."""
        for index, waiting in enumerate(self._queue):
            if waiting.execution_id == execution_id:
                return index + 1
        return 0

    @property
    def active(self) -> int:
        """How many executions hold a slot."""
        return len(self._holders)

    @property
    def waiting(self) -> int:
        """How many executions wait in the queue."""
        return len(self._queue)

    def waiting_for(self, job_name: str) -> int:
        """How many executions of one job wait in the queue."""
        return self._waiting_per_job[job_name]
