"""The agent's threads run ahead of what they start; worker threads give it back."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from agent import priority

T = TypeVar("T")


def in_new_thread(work: Callable[[], T]) -> T:
    """The result of `work` run in a thread of its own (nice values are per thread, and
    this one's must stay as it is)."""
    results: list[T] = []
    thread = threading.Thread(target=lambda: results.append(work()))
    thread.start()
    thread.join()
    return results[0]


def can_raise_priority() -> bool:
    """Whether this process may lower a thread's nice value (CAP_SYS_NICE), tried on a
    thread of its own."""

    def attempt() -> bool:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, max(priority.HIGHEST, priority.current_nice() - 1))
        except PermissionError:
            return False
        return True

    return in_new_thread(attempt)


needs_privilege = pytest.mark.skipif(
    not can_raise_priority(), reason="raising priority needs CAP_SYS_NICE, which this lacks"
)


@needs_privilege
def test_a_boost_lowers_the_threads_nice_value_and_new_threads_inherit_it() -> None:

    def boosted() -> tuple[int, int, int, int]:
        base = priority.raise_thread_priority(5)
        raised = priority.current_nice()
        inherited = in_new_thread(priority.current_nice)

        def given_back() -> int:
            priority.restore_thread_priority(base)
            return priority.current_nice()

        return base, raised, inherited, in_new_thread(given_back)

    base, raised, inherited, given_back = in_new_thread(boosted)
    assert raised == max(priority.HIGHEST, base - 5)
    assert inherited == raised
    assert given_back == base


@needs_privilege
def test_the_boost_stops_at_the_highest_priority() -> None:

    def boosted_far() -> int:
        priority.raise_thread_priority(100)
        return priority.current_nice()

    assert in_new_thread(boosted_far) == priority.HIGHEST


def test_without_the_privilege_the_thread_keeps_its_value_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(which: int, who: int, value: int) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "setpriority", refuse)
    before = priority.current_nice()
    assert priority.raise_thread_priority(10) == before
    assert priority.current_nice() == before
    assert "CAP_SYS_NICE" in caplog.text
