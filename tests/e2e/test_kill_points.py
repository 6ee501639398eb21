"""The agent killed (SIGKILL) at each step of a run where a crash leaves the most behind.

A test-only fault point (JOBAGENT_FAULTS=<point>:kill:1, agent/faults.py) kills the agent
during a pull, after a container's create before its start, after its start before
RUNNING is recorded, and during its removal. The agent is started again on the same data
directory without it: the execution ends with its true outcome, its process ran exactly
once, and nothing of it (container, mount, cgroup, conmon) is left.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest
from jobagent_client import ClientError, Execution

from tests.e2e.conftest import RUNTIMES, STARTED
from tests.e2e.harness import AgentProcess, Registry, settled_leftovers, sweep, wait_until
from tests.e2e.test_recovery import conmon_pids

POINTS = ("pull", "created", "started", "removing")
EXIT_CODE = 3


def marking_job(registry: Registry) -> str:
    """A job that leaves one line in a named volume and one in its log for each time its
    process runs, then exits with EXIT_CODE; its image is pulled at every run."""
    return (
        "version: v1\ndeployment: kills\nservices:\n  marks:\n    rtype: job\n"
        f"    image: {{name: '{registry.host}/busybox:latest', pull_policy: always}}\n"
        "    storage: [{type: named, name: marks, target: /marks}]\n"
        "    command: {entrypoint: [/bin/sh, -c, "
        f"'echo ran >> /marks/count; sleep 2; echo out; exit {EXIT_CODE}']}}\n"
    )


def marks(agent: AgentProcess) -> list[str]:
    """The lines the job's processes wrote to the volume."""
    count = agent.paths.volumes / "marks" / "count"
    return count.read_text().splitlines() if count.exists() else []


def mounts_under(agent: AgentProcess) -> list[str]:
    """Mount points under the agent's data directory or its volatile directory."""
    places = (f"{(agent.cwd / agent.data_dir).resolve()}/", f"{agent.paths.volatile}/")
    targets = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [target for target in targets if target.startswith(places)]


def cgroups_of(execution_id: str) -> list[str]:
    """The cgroups of an execution's containers, in every hierarchy."""
    root = Path("/sys/fs/cgroup")
    found = []
    for hierarchy in (root, *(entry for entry in root.iterdir() if entry.is_dir())):
        parent = hierarchy / "jobagent"
        if parent.is_dir():
            found += [str(path) for path in parent.glob(f"ja-{execution_id}*")]
    return found


def outcome_after_a_restart(
    own: AgentProcess, monkeypatch: pytest.MonkeyPatch
) -> tuple[Execution, list[list[str]]]:
    """Starts the agent again without the fault, and returns the job's one execution once
    it ended (failed with the job's exit code) and the log of each of its attempts."""
    monkeypatch.delenv("JOBAGENT_FAULTS")
    own.start()
    with own.client() as client:
        (execution,) = client.list_executions("marks")
        client.wait(execution.id)
        final = client.get_execution(execution.id)
        assert (final.status, final.failure_reason, final.exit_code) == (
            "failed",
            "exit_code",
            EXIT_CODE,
        ), final.message
        logs = [
            [line.message for line in client.logs(execution.id, attempt=attempt.number)]
            for attempt in final.attempts
        ]
    return final, logs


def assert_nothing_left(own: AgentProcess, final: Execution) -> None:
    """No container, conmon, cgroup, mount or runtime state of the execution is left."""
    assert settled_leftovers(own, final.container_id) == []
    assert conmon_pids(final.container_id) == []
    assert cgroups_of(final.id) == []
    assert mounts_under(own) == []
    assert list(own.paths.runtime_state.iterdir()) == []


@pytest.mark.parametrize("point", POINTS)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_sigkill_at_any_step_runs_the_process_once_and_leaves_nothing(
    tmp_path: Path,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    runtime: str,
    point: str,
) -> None:
    own = AgentProcess(tmp_path / "agent", runtime, registry.host)
    own.data_dir.mkdir()
    STARTED.append(own)
    monkeypatch.setenv("JOBAGENT_FAULTS", f"{point}:kill:1")
    own.start()
    try:
        with own.client() as client:
            client.register(marking_job(registry))
            # The agent may die before it answers; the execution is stored all the same.
            with contextlib.suppress(ClientError):
                client.trigger("marks")
        assert own.process is not None
        assert own.process.wait(60) == -signal.SIGKILL
        if point in ("started", "removing"):
            wait_until(lambda: marks(own) == ["ran"], 10, "the mark of the started process")
        else:
            assert marks(own) == [], "no process had started before the kill"

        final, logs = outcome_after_a_restart(own, monkeypatch)
        assert len(final.attempts) == 1
        assert logs == [["out"]]
        assert marks(own) == ["ran"]
        assert_nothing_left(own, final)
        staging = own.cwd / own.data_dir / "images" / "staging"
        assert not staging.exists() or not any(staging.iterdir())
    finally:
        own.stop()
        sweep(own)


RETRY_KILLS = {
    # The first attempt's container being removed, its failure not yet recorded.
    "first-removal": "removing:kill:1",
    # The second attempt's container created, its process not started.
    "second-created": "created:pass:1,created:kill:1",
    # The second attempt's process started, its start not yet recorded.
    "second-started": "started:pass:1,started:kill:1",
}


@pytest.mark.parametrize("kill", RETRY_KILLS, ids=str)
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_sigkill_between_attempts_runs_each_attempt_once(
    tmp_path: Path,
    registry: Registry,
    monkeypatch: pytest.MonkeyPatch,
    runtime: str,
    kill: str,
) -> None:
    own = AgentProcess(tmp_path / "agent", runtime, registry.host)
    own.data_dir.mkdir()
    STARTED.append(own)
    monkeypatch.setenv("JOBAGENT_FAULTS", RETRY_KILLS[kill])
    own.start()
    try:
        with own.client() as client:
            client.register(
                marking_job(registry).replace("pull_policy: always", "pull_policy: if_not_present")
                + "    backoff_limit: 1\n    retry_policy: {initial_delay: 1s}\n"
            )
            client.trigger("marks")
        assert own.process is not None
        assert own.process.wait(90) == -signal.SIGKILL

        final, logs = outcome_after_a_restart(own, monkeypatch)
        assert [attempt.exit_code for attempt in final.attempts] == [EXIT_CODE, EXIT_CODE]
        assert logs == [["out"], ["out"]]
        assert marks(own) == ["ran", "ran"]
        assert_nothing_left(own, final)
    finally:
        own.stop()
        sweep(own)
