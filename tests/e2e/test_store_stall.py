"""A stalled store: another process holds the agent's database in a write transaction, as
a disk that never finishes a write would hold the agent's own. The agent keeps answering,
refuses triggers with UNAVAILABLE (STORE_STALLED), keeps the end of what ran meanwhile,
and writes it once the database is free."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest
from jobagent_client import ClientError

from tests.e2e.harness import Registry, wait_until
from tests.e2e.test_supervision import agent_with_faults, metric

JOBS = (
    "version: v1\ndeployment: stall\nservices:\n"
    "  napper:\n    rtype: job\n    image: {name: busybox:latest}\n"
    # Long enough to outlast the first refused trigger's wait (2 s) on a slow host.
    "    command: {entrypoint: [/bin/sleep, '5']}\n"
    "  probe:\n    rtype: job\n    image: {name: busybox:latest}\n"
    "    command: {entrypoint: [/bin/echo, hi]}\n"
)


def stored_status(database: Path, execution_id: str) -> str:
    """The execution's status in the database, read by a connection of the test's own."""
    db = sqlite3.connect(database, timeout=5)
    try:
        row = db.execute("SELECT status FROM executions WHERE id = ?", (execution_id,)).fetchone()
        return str(row[0])
    finally:
        db.close()


def test_a_store_held_by_another_process(
    tmp_path: Path, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    with agent_with_faults(tmp_path, registry, monkeypatch, faults="") as (agent, metrics):
        database = agent.cwd / agent.data_dir / "agent.db"
        with agent.client() as client:
            client.register(JOBS)
            napper = client.trigger("napper")
            wait_until(lambda: client.get_execution(napper.id).status == "running", 30, "running")

            # Its own wait: the agent's writes are short.
            holder = sqlite3.connect(database, isolation_level=None, timeout=5)
            holder.execute("BEGIN IMMEDIATE")
            try:
                for _ in range(2):  # the first waits for the database, the second does not
                    with pytest.raises(ClientError) as refused:
                        client.trigger("probe")
                    assert refused.value.code == grpc.StatusCode.UNAVAILABLE
                    assert refused.value.reason == "STORE_STALLED"
                    assert refused.value.message.startswith("the store cannot write now: ")
                    assert agent.serving()
                    assert metric(metrics, "jobagent_store_stalled") == 1
                    assert {"napper", "probe"} <= {job.name for job in client.list_jobs()}
                # The napper's end is shown, though the store cannot take it yet.
                wait_until(
                    lambda: client.get_execution(napper.id).status == "completed", 30, "its end"
                )
                assert stored_status(database, napper.id) == "running"
            finally:
                holder.execute("ROLLBACK")
                holder.close()

            wait_until(lambda: stored_status(database, napper.id) == "completed", 10, "written")
            assert metric(metrics, "jobagent_store_stalled") == 0
            ended = client.wait(napper.id)
            assert (ended.status, ended.exit_code) == ("completed", 0)
            probe = client.wait(client.trigger("probe").id)
            assert probe.status == "completed", probe.message
    told = agent.log_file.read_text()
    # Said once for the stall, not once per refused write; and its end.
    assert told.count("ERROR agent.store: the store cannot write now: ") == 1
    assert "the store writes again" in told
