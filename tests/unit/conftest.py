"""Fixtures of the unit tests: the fake runtime, and executors over one store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.domain import JobSpec
from agent.executor import Executor
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime


@pytest.fixture
def runtime() -> FakeRuntime:
    """A runtime whose containers exist only in memory."""
    return FakeRuntime()


@pytest.fixture
async def make_executor(
    tmp_path: Path, runtime: FakeRuntime
) -> AsyncIterator[Callable[..., Executor]]:
    """Executors over one store in tmp_path (an agent, and the same agent restarted with
    other settings), closed with the store after the test."""
    store = Store(tmp_path / "agent.db")
    made: list[Executor] = []

    def make(*specs: JobSpec, **options: Any) -> Executor:
        executor = Executor(store, runtime, tmp_path / "logs", **options)
        if specs:
            executor.register_jobs(list(specs), "", replace_existing=True)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        await executor.close()
    store.close()
