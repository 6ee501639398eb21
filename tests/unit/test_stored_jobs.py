"""Stored jobs that today's validator refuses: suspended at start, reported, still readable."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent.domain import (
    CronPolicy,
    EventKind,
    ImageSpec,
    JobEvent,
    JobKind,
    JobSpec,
    Trigger,
    TriggerKind,
)
from agent.errors import FailedPrecondition, NotFound
from agent.executor import Executor
from agent.executor.stored_jobs import stored_spec_problem
from agent.store import Store

TRIGGER = Trigger(TriggerKind.CLI)
GOOD = JobSpec("good", ImageSpec("busybox:latest"))
# As an older version (or a hand) may have stored them: no validator of today saw these.
BAD_ENV = JobSpec("bad-env", ImageSpec("busybox:latest"), env={"1-NOT-A-NAME": "x"})
BAD_ZONE = JobSpec(
    "bad-zone",
    ImageSpec("busybox:latest"),
    kind=JobKind.CRON,
    schedule="* * * * *",
    cron=CronPolicy(time_zone="No/Such"),
)
# What the agent's flags decide is checked at each run, never held against a stored job.
PRIVILEGED = JobSpec("privileged", ImageSpec("busybox:latest"), privileged=True)


def suspensions(store: Store) -> dict[str, str]:
    return {
        event.job_name: event.message
        for event in store.node_events_after(0)
        if isinstance(event, JobEvent) and event.kind is EventKind.JOB_SUSPENDED
    }


def test_the_check_names_the_field_and_ignores_host_access() -> None:
    assert stored_spec_problem(GOOD) is None
    assert stored_spec_problem(PRIVILEGED) is None
    assert (stored_spec_problem(BAD_ENV) or "").startswith("spec.env.1-NOT-A-NAME:")
    assert "No/Such" in (stored_spec_problem(BAD_ZONE) or "")


async def test_a_stored_job_that_no_longer_validates_is_suspended_at_start(
    make_executor: Callable[..., Executor],
) -> None:
    make_executor(GOOD, BAD_ENV, BAD_ZONE, PRIVILEGED)
    executor = make_executor()
    await executor.start()
    store = executor._store
    reasons = suspensions(store)
    assert set(reasons) == {"bad-env", "bad-zone"}
    assert "spec.env.1-NOT-A-NAME" in reasons["bad-env"]
    assert "register it again" in reasons["bad-zone"]
    # Still read, listed and shown: the cron job as suspended.
    assert [job.name for job in executor.list_jobs()] == [
        "bad-env",
        "bad-zone",
        "good",
        "privileged",
    ]
    assert executor.get_job("bad-zone").spec.cron.suspend
    assert executor.get_job("bad-env").spec.env == {"1-NOT-A-NAME": "x"}
    for name in ("bad-env", "bad-zone"):
        with pytest.raises(FailedPrecondition, match="no longer validates"):
            await executor.trigger(name, TRIGGER)
    with pytest.raises(FailedPrecondition, match="No/Such"):
        executor.set_suspended("bad-zone", False)
    await executor.trigger("good", TRIGGER)
    # A spec registered again (through the validator) lifts the suspension.
    executor.register_jobs([JobSpec("bad-env", ImageSpec("busybox:latest"))], "", True)
    await executor.trigger("bad-env", TRIGGER)


async def test_each_start_reports_it_again_until_it_is_replaced(
    make_executor: Callable[..., Executor],
) -> None:
    make_executor(BAD_ZONE)
    first = make_executor()
    await first.start()
    updated = first.get_job("bad-zone").updated_at
    await first.close()
    second = make_executor()
    await second.start()
    events = [
        event
        for event in second._store.node_events_after(0)
        if isinstance(event, JobEvent) and event.kind is EventKind.JOB_SUSPENDED
    ]
    assert len(events) == 2
    assert second.get_job("bad-zone").updated_at == updated
    second.unregister_job("bad-zone")
    with pytest.raises(NotFound):
        await second.trigger("bad-zone", TRIGGER)
