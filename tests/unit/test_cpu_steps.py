"""bench.cpu_steps: the step timer's totals and the table made from them."""

from __future__ import annotations

import pytest

from bench import cpu_steps
from bench.cpu_steps import LOOP, STEPS, WORKER, StepClock


def test_a_wrapped_step_adds_its_threads_cpu_time_and_calls_even_when_it_raises() -> None:
    clock = StepClock()
    target = STEPS[0].target

    def busy(rounds: int) -> int:
        if rounds < 0:
            raise ValueError("no")
        return sum(range(rounds))

    timed = clock.wrap(target, busy)
    assert timed(200_000) == sum(range(200_000))
    with pytest.raises(ValueError):
        timed(-1)
    seconds, calls = clock.totals[target]
    assert calls == 2 and seconds > 0


def test_the_table_is_per_job_and_what_no_top_level_step_covers_is_the_rest() -> None:
    before = {step.target: [0.0, 0] for step in STEPS}
    after = {step.target: [0.0, 0] for step in STEPS}
    top_loop = next(step for step in STEPS if step.thread == LOOP and step.depth == 0)
    nested_loop = next(step for step in STEPS if step.thread == LOOP and step.depth == 1)
    after[top_loop.target] = [0.3, 30]  # 3 ms and 0.3 calls per job over 100 jobs
    after[nested_loop.target] = [0.2, 30]  # inside the one above: not counted again
    lines = cpu_steps.report(before, after, {LOOP: 5.0, WORKER: 1.0}, jobs=100)
    assert f"{LOOP}: 5.00 ms per job" in lines
    assert f"  {top_loop.name}: 3.000 ms (0.3 calls)" in lines
    assert f"    {nested_loop.name}: 2.000 ms (0.3 calls)" in lines
    rests = [line for line in lines if "not in a step above" in line]
    assert rests == ["  not in a step above: 2.00 ms", "  not in a step above: 1.00 ms"]


def test_every_step_names_a_function_of_the_agent() -> None:
    clock = StepClock()
    for step in STEPS:
        module_name, _, qualified = step.target.partition(":")
        owner = __import__(module_name, fromlist=["_"])
        for part in qualified.split("."):
            owner = getattr(owner, part)
        assert callable(owner), step.target
    assert set(clock.totals) == {step.target for step in STEPS}
