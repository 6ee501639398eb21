"""An agent started on the database of the previous release reads it and runs its jobs.

previous_release.sql was written by that release's store (see previous_release.py): it
predates numbered migrations, stores specs without a layout version and execution
snapshots in events as positional lists.
"""

from __future__ import annotations

import sqlite3
from itertools import islice
from pathlib import Path

import grpc
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc
from jobagent_client.models import ExecutionEvent, JobEvent

from agent.api.convert import job_spec_to_proto
from agent.spec import parse_document
from tests.e2e.conftest import running_agent
from tests.e2e.harness import Registry
from tests.e2e.previous_release import DOCUMENT

RELEASE_SQL = Path(__file__).with_name("previous_release.sql")
HELLO, PARAMS = "1" * 32, "2" * 32


def load_release(database: Path) -> int:
    """Writes the previous release's database; returns how many events it holds."""
    with sqlite3.connect(database) as db:
        db.executescript(RELEASE_SQL.read_text())
        count: int = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    db.close()
    return count


def test_the_previous_release_database_is_read_and_its_jobs_run(
    tmp_path: Path, registry: Registry
) -> None:
    data_dir = tmp_path / "agent"
    data_dir.mkdir()
    events = load_release(data_dir / "agent.db")
    # The release's rows are from a fixed day: retention must not take them first.
    keep = ("--retention-max-age", "36500d")
    with (
        running_agent(data_dir, "youki", registry, extra_args=keep) as agent,
        agent.client() as client,
        grpc.insecure_channel(agent.target) as channel,
    ):
        stub = service_grpc.JobServiceStub(channel)
        for spec in parse_document(DOCUMENT):
            stored = stub.GetJob(service_pb.GetJobRequest(name=spec.name))
            assert stored.spec == job_spec_to_proto(spec)
        assert [job.name for job in client.list_jobs()] == ["hello", "nightly", "params"]
        nightly = client.get_job("nightly")
        assert (nightly.suspended, nightly.missed) == (True, 1)

        assert [e.id for e in client.list_executions()] == [PARAMS, HELLO]
        hello = client.get_execution(HELLO)
        assert (hello.status, hello.exit_code, hello.trigger) == ("completed", 0, "cli")
        assert [attempt.exit_code for attempt in hello.attempts] == [0]
        params = client.get_execution(PARAMS)
        assert (params.status, params.failure_reason, params.attempt) == (
            "failed",
            "exit_code",
            2,
        )
        assert [attempt.exit_code for attempt in params.attempts] == [3, 3]
        assert (params.request_id, params.args, dict(params.env), params.payload_size) == (
            "req-1",
            ("--fast",),
            {"NAME": "x"},
            len(b"payload bytes"),
        )

        recorded = list(islice(client.watch_events(), events))
        assert [event.sequence for event in recorded] == list(range(1, events + 1))
        hello_states = [
            event.execution.status
            for event in recorded
            if isinstance(event, ExecutionEvent) and event.execution.id == HELLO
        ]
        assert hello_states == ["pending", "initializing", "running", "running", "completed"]
        steps = [
            (event.type, event.step_id, event.execution.status)
            for event in recorded
            if isinstance(event, ExecutionEvent) and event.step_id
        ]
        assert steps == [
            ("init_step_started", "settle", "initializing"),
            ("init_step_succeeded", "settle", "initializing"),
        ]
        missed = [e for e in recorded if isinstance(e, JobEvent) and e.type == "schedule_missed"]
        assert [(event.job_name, event.message) for event in missed] == [("nightly", "suspended")]

        rerun = client.wait(client.trigger("hello").id)
        assert (rerun.status, rerun.exit_code) == ("completed", 0)
        assert [line.message for line in client.logs(rerun.id)] == ["hello world"]
