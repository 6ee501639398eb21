"""The SQLite store: persistence, compare-and-set transitions, event sequence."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.domain import (
    Attempt,
    CommandSpec,
    Dispatch,
    Execution,
    ExecutionDetails,
    ExecutionFilter,
    FailureReason,
    ImageSpec,
    Job,
    JobKind,
    JobSpec,
    PullPolicy,
    Resources,
    Status,
    Trigger,
    TriggerKind,
    TriggerRequest,
)
from agent.errors import DataLoss, FailedPrecondition, NotFound
from agent.spec import parse_document
from agent.store import MIGRATIONS, SPEC_VERSION, StaleTransition, Store
from tests.e2e.previous_release import DOCUMENT

RELEASE_SQL = Path(__file__).parents[1] / "e2e" / "previous_release.sql"

NOW = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def make_execution(execution_id: str = "a" * 32) -> Execution:
    return Execution(
        id=execution_id,
        job_name="backup",
        status=Status.PENDING,
        trigger=Trigger(TriggerKind.INTERNAL, reason="test"),
        container_id=f"ja-{execution_id}",
        created_at=NOW,
    )


def test_jobs_and_executions_survive_reopening(tmp_path: Path) -> None:
    spec = JobSpec(
        name="report",
        deployment="reports",
        kind=JobKind.CRON,
        image=ImageSpec("busybox:latest", PullPolicy.NEVER),
        command=CommandSpec(("/bin/echo",), ("report",), "/tmp"),
        env={"A": "1"},
        schedule="30 2 * * *",
    )
    store = Store(tmp_path / "db")
    store.put_job(Job(spec, NOW, NOW, "yaml"))
    execution = make_execution()
    store.insert_execution(execution)
    failed = replace(
        execution,
        status=Status.FAILED,
        exit_code=3,
        failure_reason=FailureReason.EXIT_CODE,
        message="exited 3",
        finished_at=NOW,
    )
    store.transition(Status.PENDING, failed)
    store.close()

    reopened = Store(tmp_path / "db")
    assert reopened.get_job("report") == Job(spec, NOW, NOW, "yaml")
    assert reopened.get_execution(execution.id) == failed
    assert reopened.list_executions(job_name="backup") == [failed]
    assert reopened.list_executions(statuses=frozenset({Status.RUNNING})) == []


def test_a_transition_from_a_stale_status_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    execution = make_execution()
    store.insert_execution(execution)
    cancelled = replace(execution, status=Status.CANCELLED)
    store.transition(Status.PENDING, cancelled)
    with pytest.raises(StaleTransition):
        store.transition(Status.PENDING, replace(execution, status=Status.INITIALIZING))
    assert store.get_execution(execution.id).status is Status.CANCELLED


def test_details_are_read_once_and_follow_every_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "db")
    execution = make_execution()
    request = TriggerRequest("req-1", Dispatch(("--fast",), {"A": "1"}, b"payload"), "token:ci")
    store.insert_execution(execution, request)
    pending = store.describe_execution(execution.id)
    assert pending == ExecutionDetails(execution, (), request)
    assert store.describe_execution(execution.id) is pending

    running = replace(execution, status=Status.RUNNING, started_at=NOW)
    attempt = Attempt(1, execution.container_id, NOW)
    store.transition(Status.PENDING, running, attempt=attempt)
    assert store.describe_execution(execution.id) == ExecutionDetails(running, (attempt,), request)

    done = replace(running, status=Status.COMPLETED, exit_code=0, finished_at=NOW)
    ended = replace(attempt, exit_code=0, finished_at=NOW)
    store.transition(Status.RUNNING, done, attempt=ended)
    assert store.describe_execution(execution.id) == ExecutionDetails(done, (ended,), request)
    # A transition refused still reads anew: what is kept never runs ahead of the database.
    with pytest.raises(StaleTransition):
        store.transition(Status.RUNNING, running)
    assert store.describe_execution(execution.id).execution == done

    store.delete_executions([execution.id])
    with pytest.raises(NotFound):
        store.describe_execution(execution.id)
    # An id reused after its deletion is read as what it now is.
    store.insert_execution(execution)
    assert store.describe_execution(execution.id) == ExecutionDetails(
        execution, (), TriggerRequest()
    )

    monkeypatch.setattr("agent.store.DETAILS_CACHE", 2)
    others = [make_execution(letter * 32) for letter in "bcd"]
    for other in others:
        store.insert_execution(other)
        store.describe_execution(other.id)
    assert len(store._details) == 2


def test_an_execution_keeps_the_spec_it_was_triggered_with(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    first_spec = JobSpec(name="backup", image=ImageSpec("busybox:1"))
    store.put_job(Job(first_spec, NOW, NOW, "v1"))
    first = make_execution("a" * 32)
    store.insert_execution(first)
    later = NOW + timedelta(seconds=1)
    second_spec = replace(first_spec, image=ImageSpec("busybox:2"))
    store.put_job(Job(second_spec, NOW, later, "v2"))
    second = make_execution("b" * 32)
    store.insert_execution(second)
    assert store.execution_spec(first.id) == first_spec
    assert store.execution_spec(second.id) == second_spec
    # One of a job gone meanwhile, or of a store before specs were kept: none.
    orphan = replace(make_execution("c" * 32), job_name="gone")
    store.insert_execution(orphan)
    assert store.execution_spec(orphan.id) is None

    store.delete_executions([first.id])
    versions = store._db.execute("SELECT version FROM job_specs").fetchall()
    assert [row["version"] for row in versions] == [later.isoformat(timespec="microseconds")]
    assert store.execution_spec(second.id) == second_spec


def test_events_have_increasing_sequences_and_replay(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    first = store.insert_execution(make_execution("a" * 32))
    second = store.insert_execution(make_execution("b" * 32))
    third = store.transition(Status.PENDING, replace(first.execution, status=Status.INITIALIZING))
    assert first.sequence < second.sequence < third.sequence
    replay = store.events_since("a" * 32, 0)
    assert [event.sequence for event in replay] == [first.sequence, third.sequence]
    assert store.last_event("a" * 32).execution.status is Status.INITIALIZING


def test_missing_records_are_not_found(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    with pytest.raises(NotFound):
        store.get_job("x")
    with pytest.raises(NotFound):
        store.get_execution("x")
    with pytest.raises(NotFound):
        store.delete_job("x")
    with pytest.raises(NotFound):
        store.last_event("x")


def test_every_spec_field_round_trips(tmp_path: Path) -> None:
    spec = JobSpec(
        name="full",
        image=ImageSpec("busybox"),
        resources=Resources(cpu=0.5, memory_bytes=1 << 26, pids_limit=7),
        user="1:2",
        labels={"a": "b"},
        timeout_seconds=3.5,
        stop_signal="SIGUSR1",
        stop_grace_seconds=2.0,
    )
    store = Store(tmp_path / "db")
    store.put_job(Job(spec, NOW, NOW))
    assert store.get_job("full").spec == spec


def test_expired_executions_by_age_and_count_never_active(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")

    def finished(execution_id: str, job: str, minutes_ago: int) -> None:
        execution = replace(make_execution(execution_id), job_name=job)
        store.insert_execution(execution)
        at = datetime.now(UTC) - timedelta(minutes=minutes_ago)
        store.transition(
            Status.PENDING, replace(execution, status=Status.COMPLETED, finished_at=at)
        )

    finished("a1", "a", 1)
    finished("a2", "a", 2)
    finished("a3", "a", 3)
    finished("b1", "b", 600)
    store.insert_execution(replace(make_execution("r1"), job_name="a"))
    expired = store.expired_executions(datetime.now(UTC) - timedelta(minutes=60), keep_per_job=2)
    assert sorted(expired) == ["a3", "b1"]
    store.delete_executions(expired)
    assert {e.id for e in store.list_executions()} == {"a1", "a2", "r1"}
    assert store.events_since("a3", 0) == []


def test_pages_are_newest_first_and_stable_under_inserts(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    for index in range(25):
        store.insert_execution(make_execution(f"{index:032d}"))
    first, cursor = store.page_executions(ExecutionFilter(), 10)
    assert [e.id for e in first] == [f"{i:032d}" for i in range(24, 14, -1)]
    for index in range(25, 30):
        store.insert_execution(make_execution(f"{index:032d}"))
    seen = [e.id for e in first]
    while cursor is not None:
        page, cursor = store.page_executions(ExecutionFilter(), 10, cursor)
        seen.extend(e.id for e in page)
    assert seen == [f"{i:032d}" for i in range(24, -1, -1)]
    failed = replace(make_execution("f" * 32), trigger=Trigger(TriggerKind.CLI))
    store.insert_execution(failed)
    store.transition(Status.PENDING, replace(failed, status=Status.FAILED))
    wanted = ExecutionFilter(
        statuses=frozenset({Status.FAILED}), triggers=frozenset({TriggerKind.CLI})
    )
    assert [e.id for e in store.page_executions(wanted, 10)[0]] == ["f" * 32]
    assert store.page_executions(ExecutionFilter(created_after=NOW.replace(year=2030)), 10) == (
        [],
        None,
    )


def test_a_page_of_one_jobs_executions_is_read_in_order_not_sorted(tmp_path: Path) -> None:
    # Sorting every execution of the job for each page of 100 took 4 ms with 1,000 of them.
    store = Store(tmp_path / "db")
    for index in range(6):
        execution = make_execution(f"{index:032d}")
        store.insert_execution(replace(execution, job_name="other" if index % 2 else "job"))
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    page, cursor = store.page_executions(ExecutionFilter(job_name="job"), 2)
    store._db.set_trace_callback(None)
    assert [e.id for e in page] == [f"{4:032d}", f"{2:032d}"] and cursor is not None
    (query,) = [text for text in statements if text.startswith("SELECT rowid AS cursor")]
    plan = " ".join(row[3] for row in store._db.execute(f"EXPLAIN QUERY PLAN {query}"))
    assert "executions_by_job_rowid" in plan and "TEMP B-TREE" not in plan


def release_database(path: Path) -> Path:
    """The previous release's database (tests/e2e/previous_release.sql) at `path`."""
    with sqlite3.connect(path) as db:
        db.executescript(RELEASE_SQL.read_text())
    db.close()
    return path


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
    db.close()
    return version


def test_a_database_of_the_previous_release_is_migrated_and_read(tmp_path: Path) -> None:
    path = release_database(tmp_path / "agent.db")
    assert user_version(path) == 0
    store = Store(path)
    assert user_version(path) == len(MIGRATIONS)
    specs = parse_document(DOCUMENT)
    assert [job.spec for job in store.list_jobs()] == sorted(specs, key=lambda s: s.name)
    assert store.get_cron_state("nightly").missed == 1
    hello, params = store.get_execution("1" * 32), store.get_execution("2" * 32)
    assert (hello.status, hello.trigger.kind, hello.attempt) == (
        Status.COMPLETED,
        TriggerKind.CLI,
        1,
    )
    assert (params.failure_reason, params.attempt) == (FailureReason.EXIT_CODE, 2)
    assert [attempt.exit_code for attempt in store.list_attempts(params.id)] == [3, 3]
    assert store.get_request(params.id).dispatch.payload == b"payload bytes"
    snapshots = [event.execution for event in store.events_since(hello.id, 0)]
    assert [s.status for s in snapshots] == [
        Status.PENDING,
        Status.INITIALIZING,
        Status.RUNNING,
        Status.RUNNING,
        Status.COMPLETED,
    ]
    assert snapshots[-1] == hello
    events = store.node_events_after(0)
    assert len(events) == store.last_sequence()
    store.close()
    # Reopening applies nothing again.
    assert Store(path).node_events_after(0) == events


def test_a_damaged_row_of_the_previous_release_stays_unreadable_alone(tmp_path: Path) -> None:
    path = release_database(tmp_path / "agent.db")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE jobs SET spec = '{not json' WHERE name = 'params'")
    db.close()
    store = Store(path)
    assert [job.name for job in store.list_jobs()] == ["hello", "nightly"]
    with pytest.raises(DataLoss):
        store.get_job("params")


def test_a_database_of_a_newer_agent_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "agent.db").close()
    with sqlite3.connect(tmp_path / "agent.db") as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(FailedPrecondition, match="written by a newer agent"):
        Store(tmp_path / "agent.db")


def test_a_spec_is_stored_with_its_layout_version_and_an_unknown_one_is_data_loss(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "agent.db")
    store.put_job(Job(JobSpec("a", ImageSpec("busybox")), NOW, NOW))
    store.close()
    with sqlite3.connect(tmp_path / "agent.db") as db:
        [text] = db.execute("SELECT spec FROM jobs").fetchone()
        assert json.loads(text)["schema_version"] == SPEC_VERSION
        db.execute(
            "UPDATE jobs SET spec = ?",
            (text.replace('"schema_version": 1', '"schema_version": 9'),),
        )
    db.close()
    with pytest.raises(DataLoss, match="spec layout 9"):
        Store(tmp_path / "agent.db").get_job("a")
