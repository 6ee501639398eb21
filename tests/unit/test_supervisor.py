"""The supervisor of background tasks: restart with backoff, health, stop; and the fault
points the end-to-end tests use to make tasks fail."""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import faults
from agent.supervisor import Backoff, Supervisor

FAST = Backoff(initial=0.01, maximum=0.04)


async def until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    """Waits until `condition()` holds; fails after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_backoff_doubles_to_its_maximum_and_starts_afresh_after_a_long_run() -> None:
    backoff = Backoff(initial=1, maximum=30)
    delays = [backoff.next(None, 0)]
    for _ in range(6):
        delays.append(backoff.next(delays[-1], 0.5))
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.next(30, ran_for=30) == 1


async def test_a_failing_task_is_logged_counted_and_restarted_with_growing_delays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    starts: list[float] = []
    restarted: list[str] = []

    async def work() -> None:
        starts.append(loop.time())
        raise RuntimeError(f"failure {len(starts)}")

    supervisor = Supervisor(FAST, on_restart=restarted.append)
    with caplog.at_level(logging.ERROR, logger="agent.supervisor"):
        supervisor.start("flaky", work, core=False)
        await until(lambda: len(starts) >= 5)
        await supervisor.stop()
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= wanted for gap, wanted in zip(gaps, [0.01, 0.02, 0.04, 0.04], strict=False))
    assert restarted == ["flaky"] * supervisor.restarts("flaky")
    assert supervisor.restarts("flaky") >= 4
    failure = caplog.records[0]
    assert "background task flaky failed; restarting it in 0.01s" in failure.getMessage()
    assert failure.exc_info is not None and "failure 1" in str(failure.exc_info[1])


async def test_a_task_that_returns_is_restarted_too() -> None:
    runs: list[int] = []

    async def work() -> None:
        runs.append(1)

    supervisor = Supervisor(FAST)
    supervisor.start("short", work, core=False)
    await until(lambda: len(runs) >= 2)
    await supervisor.stop()
    assert supervisor.restarts("short") >= 1


async def test_stop_cancels_running_work_and_no_restart_follows() -> None:
    started = asyncio.Event()
    cancelled: list[bool] = []
    restarted: list[str] = []

    async def work() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    supervisor = Supervisor(FAST, on_restart=restarted.append)
    supervisor.start("sleeper", work, core=True)
    await started.wait()
    await supervisor.stop()
    assert cancelled == [True]
    await asyncio.sleep(0.05)
    assert restarted == []


async def test_stop_during_the_backoff_ends_the_task() -> None:
    runs: list[int] = []

    async def work() -> None:
        runs.append(1)
        raise RuntimeError("down")

    supervisor = Supervisor(Backoff(initial=3600))
    supervisor.start("down", work, core=False)
    await until(lambda: supervisor.down() == ["down"])
    await asyncio.wait_for(supervisor.stop(), 1)
    assert runs == [1]
    assert supervisor.restarts("down") == 0


async def test_health_turns_bad_while_a_core_task_is_down_and_good_once_it_runs_again() -> None:
    reports: list[bool] = []
    failures_left = [2]

    async def report(healthy: bool) -> None:
        reports.append(healthy)

    async def core() -> None:
        if failures_left[0]:
            failures_left[0] -= 1
            raise RuntimeError("tick failed")
        await asyncio.sleep(3600)

    async def side() -> None:
        raise RuntimeError("retention failed")

    supervisor = Supervisor(FAST, on_health=report)
    supervisor.start("side", side, core=False)
    supervisor.start("core", core, core=True)
    await until(lambda: reports == [False])
    assert not supervisor.healthy
    # Once the core task has run for the first delay without failing: healthy again,
    # although the side task keeps failing.
    await until(lambda: reports == [False, True])
    assert supervisor.healthy
    assert supervisor.down() in (["side"], [])
    await supervisor.stop()
    assert supervisor.restarts("core") == 2
    assert reports == [False, True]


async def test_work_cancelled_by_someone_else_counts_as_a_failure() -> None:
    tasks: list[asyncio.Task[None]] = []

    async def work() -> None:
        if not tasks:
            current = asyncio.current_task()
            assert current is not None
            tasks.append(current)
        await asyncio.sleep(3600)

    supervisor = Supervisor(FAST)
    supervisor.start("victim", work, core=True)
    await until(lambda: bool(tasks))
    tasks[0].cancel()
    await until(lambda: supervisor.restarts("victim") == 1)
    await supervisor.stop()


async def test_a_task_name_is_supervised_once() -> None:
    async def work() -> None:
        await asyncio.sleep(3600)

    supervisor = Supervisor()
    supervisor.start("one", work, core=False)
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.start("one", work, core=False)
    await supervisor.stop()


def test_fault_points_play_their_script_and_are_inert_without_one() -> None:
    try:
        faults.load("scheduler:pass:1,scheduler:raise:2,retention:raise:1")
        faults.hit("scheduler")
        for _ in range(2):
            with pytest.raises(faults.InjectedFault, match="scheduler"):
                faults.hit("scheduler")
        faults.hit("scheduler")
        with pytest.raises(faults.InjectedFault):
            faults.hit("retention")
        faults.hit("retention")
        faults.hit("image-gc")
    finally:
        faults.load("")


BAD_SCRIPTS = ["scheduler", "scheduler:explode:1", "scheduler:raise:x", ":raise:1", "a:raise:1:2"]


@pytest.mark.parametrize("text", BAD_SCRIPTS)
def test_a_bad_fault_script_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="JOBAGENT_FAULTS"):
        faults.parse(text)


def test_a_kill_step_ends_the_process_with_sigkill_at_once() -> None:
    program = (
        "import sys\n"
        "from agent import faults\n"
        "faults.load('pull:pass:1,pull:kill:1')\n"
        "faults.hit('pull'); print('passed', flush=True)\n"
        "faults.hit('pull'); print('survived', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert (done.returncode, done.stdout) == (-signal.SIGKILL, "passed\n")
