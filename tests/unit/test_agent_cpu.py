"""bench.agent_cpu: the per-thread figures it reads from /proc."""

from __future__ import annotations

import os
import threading
import time

from bench.agent_cpu import switches_between, thread_switches


def test_a_thread_that_waits_counts_voluntary_switches() -> None:
    this_thread = threading.get_native_id()
    before = thread_switches(os.getpid())
    for _ in range(5):
        time.sleep(0.001)
    after = thread_switches(os.getpid())
    assert this_thread in before and this_thread in after
    voluntary, _ = switches_between(before, after)
    assert voluntary >= 5


def test_a_thread_started_in_between_counts_from_zero_and_an_ended_one_not_at_all() -> None:
    before = {1: (10, 2), 2: (50, 5)}
    after = {1: (14, 3), 3: (7, 1)}
    assert switches_between(before, after) == (4 + 7, 1 + 1)
