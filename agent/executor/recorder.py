"""Recording: every change of an execution is checked, stored, then published."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from agent.domain import Attempt, EventKind, Execution, Status
from agent.executor.events import EventBus
from agent.executor.machine import check_transition
from agent.store import StaleTransition, Store

log = logging.getLogger(__name__)


class Recorder:
    """Writes transitions and events through the store and hands them to the event bus."""

    def __init__(self, store: Store, bus: EventBus) -> None:
        self.store = store
        self.bus = bus

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
        return self._write(execution, replace(execution, status=status, **changes),
                           EventKind.TRANSITION, "", attempt)  # fmt: skip

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
        """Records an event that changes nothing (an init step's progress, a queue wait)."""
        self.bus.publish(self.store.append_event(execution, kind, step_id, message))
        log.info("job %s: %s %s %s", execution.job_name, kind.value, step_id, message,
                 extra={"execution_id": execution.id})  # fmt: skip

    def _write(
        self,
        execution: Execution,
        updated: Execution,
        kind: EventKind,
        message: str,
        attempt: Attempt | None,
    ) -> Execution:
        try:
            event = self.store.transition(execution.status, updated, kind, message, attempt)
        except StaleTransition:
            log.warning("execution %s: dropped a late %s", execution.id, kind.value)
            return self.store.get_execution(execution.id)
        self.bus.publish(event)
        detail = updated.message or ("" if updated.exit_code is None else
                                     f"exit code {updated.exit_code}")  # fmt: skip
        log.info("job %s: %s %s", updated.job_name, updated.status.value
                 if kind is EventKind.TRANSITION else kind.value, detail,
                 extra={"execution_id": updated.id})  # fmt: skip
        return updated
