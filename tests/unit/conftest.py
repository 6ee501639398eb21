"""Fixtures of the unit tests: the fake runtime, executors over one store, and a short
stall limit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent import store as store_module
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


@pytest.fixture
def short_stall(monkeypatch: pytest.MonkeyPatch) -> float:
    """A STALL_SECONDS of one second for the stores the test opens; that second."""
    monkeypatch.setattr(store_module, "STALL_SECONDS", 1.0)
    return 1.0
