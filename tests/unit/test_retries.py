"""Retries: attempts, backoff, exit-code rules, cancel and deadline between attempts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.domain import (
    EventKind,
    FailureReason,
    ImageSpec,
    JobSpec,
    RetryPolicy,
    Status,
    Trigger,
    TriggerKind,
)
from agent.executor import Executor
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime


def fast(**options: Any) -> RetryPolicy:
    """A retry policy with delays short enough for a unit test."""
    return RetryPolicy(initial_delay_seconds=0.01, max_delay_seconds=0.02, **options)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Executor, FakeRuntime, Store]]:
    runtime = FakeRuntime()
    store = Store(tmp_path / "db")
    executor = Executor(store, runtime, tmp_path / "logs")
    yield executor, runtime, store
    await executor.close()
    store.close()


async def started(runtime: FakeRuntime, container_id: str) -> None:
    for _ in range(500):
        if container_id in runtime.started:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{container_id} never started")


async def run_with_exits(
    executor: Executor, runtime: FakeRuntime, policy: RetryPolicy, codes: list[int]
) -> str:
    executor.register_jobs([JobSpec("flaky", ImageSpec("busybox"), retry=policy)], "", True)
    execution = await executor.trigger("flaky", Trigger(TriggerKind.CLI))
    for number, code in enumerate(codes, start=1):
        container_id = (
            execution.container_id if number == 1 else f"{execution.container_id}-{number}"
        )
        await started(runtime, container_id)
        runtime.exit(container_id, code)
    async for _ in executor.watch(execution.id):
        pass
    return execution.id


async def test_failed_attempts_are_retried_until_one_succeeds(
    setup: tuple[Executor, FakeRuntime, Store],
) -> None:
    executor, runtime, store = setup
    execution_id = await run_with_exits(executor, runtime, fast(backoff_limit=3), [1, 1, 0])
    final = executor.get_execution(execution_id)
    assert (final.status, final.attempt, final.exit_code) == (Status.COMPLETED, 3, 0)
    attempts = executor.list_attempts(execution_id)
    assert [(a.number, a.exit_code, a.failure_reason) for a in attempts] == [
        (1, 1, FailureReason.EXIT_CODE),
        (2, 1, FailureReason.EXIT_CODE),
        (3, 0, None),
    ]
    assert len({attempt.container_id for attempt in attempts}) == 3
    kinds = [event.kind for event in store.events_since(execution_id, 0)]
    assert kinds.count(EventKind.ATTEMPT_FAILED) == 2
    assert kinds.count(EventKind.ATTEMPT_STARTED) == 2
    assert len(runtime.removed) >= 3


async def test_the_backoff_limit_ends_in_failed_with_the_last_exit_code(
    setup: tuple[Executor, FakeRuntime, Store],
) -> None:
    executor, runtime, _ = setup
    execution_id = await run_with_exits(executor, runtime, fast(backoff_limit=1), [5, 6])
    final = executor.get_execution(execution_id)
    assert (final.status, final.attempt, final.exit_code) == (Status.FAILED, 2, 6)
    assert final.failure_reason is FailureReason.EXIT_CODE
    assert "after 2 attempts" in final.message


@pytest.mark.parametrize(
    "policy",
    [
        fast(backoff_limit=3, fail_exit_codes=(2,)),
        fast(backoff_limit=3, retry_exit_codes=(1,)),
    ],
)
async def test_exit_code_rules_fail_at_once(
    setup: tuple[Executor, FakeRuntime, Store], policy: RetryPolicy
) -> None:
    executor, runtime, _ = setup
    execution_id = await run_with_exits(executor, runtime, policy, [2])
    final = executor.get_execution(execution_id)
    assert (final.status, final.attempt, final.exit_code) == (Status.FAILED, 1, 2)


async def test_cancel_during_the_backoff_ends_cancelled(
    setup: tuple[Executor, FakeRuntime, Store],
) -> None:
    executor, runtime, _ = setup
    policy = RetryPolicy(backoff_limit=3, initial_delay_seconds=30, max_delay_seconds=30)
    executor.register_jobs([JobSpec("slow-retry", ImageSpec("busybox"), retry=policy)], "", True)
    execution = await executor.trigger("slow-retry", Trigger(TriggerKind.CLI))
    await started(runtime, execution.container_id)
    runtime.exit(execution.container_id, 1)
    for _ in range(100):
        if executor.list_attempts(execution.id)[0].finished_at is not None:
            break
        await asyncio.sleep(0.01)
    final = await asyncio.wait_for(executor.cancel(execution.id), 5)
    assert (final.status, final.attempt) == (Status.CANCELLED, 1)
    assert f"{execution.container_id}-2" not in runtime.created


@pytest.mark.parametrize("stopped_while", ["backoff", "next-start"])
async def test_a_restart_between_attempts_goes_on_with_the_retries(
    tmp_path: Path, stopped_while: str
) -> None:
    """Found by the soak: an agent stopped while a failed attempt waited for its retry
    (or while the retry's container was being started) ended the execution AGENT_LOST at
    its next start, and left the retry's exit record behind."""
    runtime = FakeRuntime()
    store = Store(tmp_path / "db")
    first = Executor(store, runtime, tmp_path / "logs")
    delay = 0.3 if stopped_while == "backoff" else 0.01
    policy = RetryPolicy(backoff_limit=2, initial_delay_seconds=delay, max_delay_seconds=delay)
    first.register_jobs([JobSpec("flaky", ImageSpec("busybox"), retry=policy)], "", True)
    execution = await first.trigger("flaky", Trigger(TriggerKind.CLI))
    retry = f"{execution.container_id}-2"
    await started(runtime, execution.container_id)
    gate = runtime.start_gate = asyncio.Event() if stopped_while == "next-start" else None
    runtime.exit(execution.container_id, 1)
    for _ in range(500):
        if stopped_while == "backoff" and first.list_attempts(execution.id)[0].finished_at:
            break
        if stopped_while == "next-start" and retry in runtime.created:
            break
        await asyncio.sleep(0.01)
    if stopped_while == "next-start":
        # The stop waits for the runtime's start to end, and leaves the started process
        # for the next agent to follow.
        closing = asyncio.ensure_future(first.close())
        await asyncio.sleep(0.05)
        assert not closing.done()
        assert gate is not None
        gate.set()
        await closing
        assert retry in runtime.started and retry not in runtime.removed
    else:
        await first.close()
        assert retry not in runtime.started
    assert store.get_execution(execution.id).status is Status.RUNNING
    assert set(runtime.removed) <= set(runtime.forgotten)

    runtime.start_gate = None
    second = Executor(store, runtime, tmp_path / "logs")
    await second.start()
    await started(runtime, retry)
    runtime.exit(retry, 0)
    async for _ in second.watch(execution.id):
        pass
    final = second.get_execution(execution.id)
    assert (final.status, final.attempt, final.failure_reason) == (Status.COMPLETED, 2, None)
    for _ in range(100):
        if retry in runtime.forgotten:
            break
        await asyncio.sleep(0.01)
    assert set(runtime.removed) <= set(runtime.forgotten)
    await second.close()
    store.close()


def test_the_delay_doubles_up_to_the_maximum() -> None:
    policy = RetryPolicy(initial_delay_seconds=1, max_delay_seconds=5)
    assert [policy.delay(retry) for retry in (1, 2, 3, 4)] == [1, 2, 4, 5]
