"""Admission: FIFO order under node-wide and per-job limits."""

from __future__ import annotations

from agent.executor.admission import Admission


def test_fifo_under_the_node_limit() -> None:
    admission = Admission(node_limit=2)
    for name in ("a", "b", "c"):
        admission.enqueue(name, f"job-{name}", None)
    assert admission.admit() == ["a", "b"]
    assert (admission.position("c"), admission.active, admission.waiting) == (1, 2, 1)
    admission.release("a")
    assert admission.admit() == ["c"]
    assert admission.position("c") == 0


def test_a_job_at_its_limit_does_not_hold_up_other_jobs() -> None:
    admission = Admission(node_limit=10)
    admission.enqueue("x1", "x", 1)
    admission.enqueue("x2", "x", 1)
    admission.enqueue("y1", "y", 1)
    assert admission.admit() == ["x1", "y1"]
    assert admission.position("x2") == 1
    admission.release("y1")
    assert admission.admit() == []
    admission.release("x1")
    assert admission.admit() == ["x2"]


def test_withdraw_and_occupy() -> None:
    admission = Admission(node_limit=1)
    admission.occupy("old", "job")
    admission.enqueue("new", "job", None)
    assert admission.admit() == []
    assert admission.withdraw("new") is True
    assert admission.withdraw("new") is False
    admission.release("old")
    admission.release("never-held")
    assert admission.active == 0
