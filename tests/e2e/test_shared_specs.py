"""Every job spec of the project's shared set, with the outcome its first line states."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from jobagent_client import ClientError, JobAgentClient
from jobagent_client.models import Execution

from tests.e2e.harness import REPO

SPECS_DIR = Path(os.environ.get("JOBAGENT_SPECS_DIR", REPO.parent / "shared" / "specs"))
SPECS = sorted(SPECS_DIR.glob("*.yaml")) if SPECS_DIR.is_dir() else []
NOT_YET = {
    "init-steps.yaml": "init steps come with the full job contract (issue 3)",
}


def stdout_of(client: JobAgentClient, execution: Execution, stream: str) -> list[str]:
    return [line.message for line in client.logs(execution.id, stream=stream)]


def backup(client: JobAgentClient, execution: Execution) -> None:
    assert (execution.status, execution.exit_code) == ("completed", 0)
    assert "backup done" in stdout_of(client, execution, "stdout")


def failing(client: JobAgentClient, execution: Execution) -> None:
    assert (execution.status, execution.exit_code, execution.failure_reason) == (
        "failed",
        3,
        "exit_code",
    )
    assert "schema locked" in stdout_of(client, execution, "stderr")


def out_of_memory(client: JobAgentClient, execution: Execution) -> None:
    assert (execution.status, execution.failure_reason) == ("failed", "oom_killed")
    assert execution.exit_code == 137


OUTCOMES: dict[str, Callable[[JobAgentClient, Execution], None]] = {
    "backup-job.yaml": backup,
    "failing-job.yaml": failing,
    "resources.yaml": out_of_memory,
}


def verdict(path: Path) -> tuple[str, str]:
    """("accept", "") or ("reject", field) from the file's first comment line."""
    first = path.read_text().splitlines()[0]
    match = re.match(r"#\s*(accept|reject)(?::\s*(\S+))?", first)
    assert match, f"{path.name}: first line must say accept or reject"
    return match.group(1), match.group(2) or ""


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(path, marks=pytest.mark.xfail(strict=True, reason=NOT_YET[path.name]))
        if path.name in NOT_YET
        else path
        for path in SPECS
    ],
    ids=[path.name for path in SPECS],
)
def test_shared_spec(path: Path, client: JobAgentClient) -> None:
    kind, field = verdict(path)
    if kind == "reject":
        with pytest.raises(ClientError) as caught:
            client.register(path.read_text(), replace=True)
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.field == field
        return
    jobs = client.register(path.read_text(), replace=True)
    assert jobs
    for job in jobs:
        if job.kind == "cron":
            assert client.get_job(job.name).schedule
            continue
        check = OUTCOMES.get(path.name)
        assert check is not None, f"{path.name}: add its expected outcome to OUTCOMES"
        check(client, client.wait(client.trigger(job.name).id))


def test_the_shared_specs_are_there() -> None:
    assert SPECS, f"no job specs in {SPECS_DIR} (set JOBAGENT_SPECS_DIR)"
