"""The transition table: every legal and illegal transition."""

from __future__ import annotations

import itertools

import pytest

from agent.domain import Status
from agent.executor.machine import IllegalTransition, check_transition

LEGAL = {
    (Status.PENDING, Status.INITIALIZING),
    (Status.PENDING, Status.FAILED),
    (Status.PENDING, Status.CANCELLED),
    (Status.INITIALIZING, Status.RUNNING),
    (Status.INITIALIZING, Status.FAILED),
    (Status.INITIALIZING, Status.CANCELLED),
    (Status.RUNNING, Status.COMPLETED),
    (Status.RUNNING, Status.FAILED),
    (Status.RUNNING, Status.CANCELLED),
}
ALL_PAIRS = list(itertools.product(Status, Status))


@pytest.mark.parametrize(("current", "target"), sorted(LEGAL, key=str))
def test_legal_transitions_pass(current: Status, target: Status) -> None:
    check_transition(current, target)


@pytest.mark.parametrize(("current", "target"), [pair for pair in ALL_PAIRS if pair not in LEGAL])
def test_illegal_transitions_raise(current: Status, target: Status) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(current, target)


def test_terminal_states_have_no_way_out() -> None:
    for status in (Status.COMPLETED, Status.FAILED, Status.CANCELLED):
        assert status.terminal
        for target in Status:
            with pytest.raises(IllegalTransition):
                check_transition(status, target)
