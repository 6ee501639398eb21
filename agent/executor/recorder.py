"""Recording: every change of an execution is checked, stored, then published.

When the disk is full, a write is tried again once the disk reserve is released; a
terminal state that still cannot be written, for a full disk or a stalled store, is kept
here (and shown by reads) until `flush` writes it: an execution's end is never lost to
either, and never blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from agent.domain import Attempt, EventKind, Execution, ExecutionEvent, Status
from agent.errors import DiskFull, StoreUnwritable
from agent.executor.events import EventBus
from agent.executor.machine import check_transition
from agent.store import StaleTransition, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Unwritten:
    """A terminal transition the store could not take yet."""

    expected: Status
    execution: Execution
    kind: EventKind
    message: str
    attempt: Attempt | None


class Recorder:
    """Writes transitions and events through the store and hands them to the event bus."""

    def __init__(
        self, store: Store, bus: EventBus, make_room: Callable[[], bool] | None = None
    ) -> None:
        """`make_room` frees space for the store when a write found the disk full (the
        disk reserve); it returns False when it had nothing to free."""
        self._store = store
        self._bus = bus
        self._make_room = make_room
        self._unwritten: dict[str, _Unwritten] = {}

    def transition(
        self,
        execution: Execution,
        status: Status,
        attempt: Attempt | None = None,
        **changes: Any,
    ) -> Execution:
        """Moves the execution to `status` (the table must allow it) and records the event.

        A transition from a state the store no longer holds is dropped: a late writer never
        overwrites a newer state. Returns the execution as stored.
        """
        check_transition(execution.status, status)
        return self._write(
            execution,
            replace(execution, status=status, **changes),
            EventKind.TRANSITION,
            "",
            attempt,
        )

    def update(
        self,
        execution: Execution,
        kind: EventKind,
        message: str,
        attempt: Attempt | None = None,
        **changes: Any,
    ) -> Execution:
        """Changes the execution without a transition (a new attempt) and records the event."""
        return self._write(execution, replace(execution, **changes), kind, message, attempt)

    def event(self, execution: Execution, kind: EventKind, step_id: str, message: str) -> None:
        """Records an event that changes nothing (an init step's progress, a queue wait);
        when the store cannot take it (a full disk, a stalled store) it is logged only."""
        try:
            self._bus.publish(self._store.append_event(execution, kind, step_id, message))
        except StoreUnwritable as error:
            log.warning(
                "job %s: %s %s not recorded: %s",
                execution.job_name,
                kind.value,
                step_id,
                error,
                extra={"execution_id": execution.id},
            )
            return
        log.info(
            "job %s: %s %s %s",
            execution.job_name,
            kind.value,
            step_id,
            message,
            extra={"execution_id": execution.id},
        )

    def _write(
        self,
        execution: Execution,
        updated: Execution,
        kind: EventKind,
        message: str,
        attempt: Attempt | None,
    ) -> Execution:
        if (kept := self._unwritten.get(execution.id)) is not None:
            log.warning("execution %s: dropped a late %s", execution.id, kind.value)
            return kept.execution
        try:
            event = self._store_with_room(execution.status, updated, kind, message, attempt)
        except StaleTransition:
            log.warning("execution %s: dropped a late %s", execution.id, kind.value)
            return self._store.get_execution(execution.id)
        except StoreUnwritable as error:
            if not updated.status.terminal:
                raise
            log.error(
                "execution %s: %s; its end (%s) is kept until it can be written",
                execution.id,
                error,
                updated.status.value,
            )
            self._unwritten[execution.id] = _Unwritten(
                execution.status, updated, kind, message, attempt
            )
            return updated
        self._bus.publish(event)
        detail = updated.message or (
            "" if updated.exit_code is None else f"exit code {updated.exit_code}"
        )
        log.info(
            "job %s: %s %s",
            updated.job_name,
            updated.status.value if kind is EventKind.TRANSITION else kind.value,
            detail,
            extra={"execution_id": updated.id},
        )
        return updated

    def _store_with_room(
        self,
        expected: Status,
        updated: Execution,
        kind: EventKind,
        message: str,
        attempt: Attempt | None,
    ) -> ExecutionEvent:
        """The store's transition; on a full disk, once more after making room."""
        try:
            return self._store.transition(expected, updated, kind, message, attempt)
        except DiskFull:
            if self._make_room is None or not self._make_room():
                raise
        return self._store.transition(expected, updated, kind, message, attempt)

    def last_attempt_start(self, execution: Execution) -> datetime | None:
        """When the execution's latest recorded attempt started; None before the first."""
        attempts = self._store.list_attempts(execution.id)
        return attempts[-1].started_at if attempts else None

    def latest(self, execution: Execution) -> Execution:
        """The execution as recorded: its kept terminal state when that is not written yet."""
        kept = self._unwritten.get(execution.id)
        return execution if kept is None else kept.execution

    @property
    def unwritten(self) -> int:
        """How many terminal states wait for room in the store."""
        return len(self._unwritten)

    def keeps(self, execution_id: str) -> bool:
        """True while the execution's terminal state waits in memory for room in the store."""
        return execution_id in self._unwritten

    def flush(self) -> list[Execution]:
        """Writes the kept terminal states, oldest first, while the store takes them; returns
        the executions whose kept state is no longer kept (written, or overtaken)."""
        settled: list[Execution] = []
        for execution_id, kept in list(self._unwritten.items()):
            try:
                event = self._store.transition(
                    kept.expected, kept.execution, kept.kind, kept.message, kept.attempt
                )
            except StaleTransition:
                log.warning("execution %s: its kept end was overtaken", execution_id)
            except StoreUnwritable:
                return settled
            else:
                self._bus.publish(event)
                status = kept.execution.status.value
                log.info("execution %s: its kept end (%s) is written", execution_id, status)
            del self._unwritten[execution_id]
            settled.append(kept.execution)
        return settled
