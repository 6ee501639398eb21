"""The execution state machine, as a table.

Pending -> Initializing -> Running -> Completed | Failed, and Cancelled (or Failed)
from any non-terminal state. Terminal states are final.
"""

from __future__ import annotations

from agent.domain import Status
from agent.errors import FailedPrecondition

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset({Status.INITIALIZING, Status.FAILED, Status.CANCELLED}),
    Status.INITIALIZING: frozenset({Status.RUNNING, Status.FAILED, Status.CANCELLED}),
    Status.RUNNING: frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED}),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


class IllegalTransition(FailedPrecondition):
    """A transition the table does not allow (for instance out of a terminal state)."""


def check_transition(current: Status, target: Status) -> None:
    """Raises IllegalTransition unless the table allows current -> target."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(f"cannot go from {current.value} to {target.value}")
