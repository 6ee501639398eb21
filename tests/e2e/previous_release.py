"""Writes previous_release.sql: a database as the release before numbered migrations wrote it.

The rows come from that release's own store code, not from this tree's: run with the
release's agent package exported into a directory, as

    git archive e9bcb1b agent | tar -x -C RELEASE_DIR
    python tests/e2e/previous_release.py RELEASE_DIR tests/e2e/previous_release.sql

It writes what an agent records in use: jobs registered from YAML, runs that completed,
failed after a retry and went through init steps, a dispatched run with its request, a
suspended cron job with its cron state, and their execution and job events.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

DOCUMENT = """\
version: v1
deployment: legacy
services:
  hello:
    rtype: job
    image: {name: 'busybox:latest'}
    command:
      entrypoint: ['/bin/sh', '-c', 'echo "hello ${GREETING}"']
    env: {GREETING: world}
  params:
    rtype: job
    image: {name: 'busybox:latest', pull_policy: never}
    command: {entrypoint: ['/bin/sh', '-c'], args: ['exit 3'], workdir: /tmp}
    resources: {cpu: 0.5, memory: 64Mi, pids_limit: 64}
    labels: {team: storage}
    timeout: 5m
    stop_signal: INT
    stop_grace_period: 3s
    init:
      steps:
        - {id: settle, uses: init.sleep, with: {duration: 1s}, retry: 1, on_failure: warn}
    errors: {on_init_failure: {action: fail}}
    max_concurrent: 2
    backoff_limit: 1
    retry_policy: {initial_delay: 1s, max_delay: 2s, fail_exit_codes: [9]}
    max_log_size: 64Ki
    storage: [{type: tmpfs, target: /scratch, size: 8Mi}]
    dispatch: {args: true, env: [NAME], payload: optional}
  nightly:
    rtype: cron
    schedule: '0 3 * * *'
    image: {name: 'busybox:latest'}
    command: {entrypoint: ['/bin/true']}
    time_zone: Europe/Berlin
    concurrency_policy: forbid
    suspend: true
    starting_deadline_seconds: 60
    successful_jobs_history_limit: 5
"""
START = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
DIGEST = "busybox@sha256:" + "ab" * 32


def main(release: Path, output: Path) -> None:
    """Writes the release's database for DOCUMENT to `output` as SQL."""
    sys.path.insert(0, str(release))
    import agent

    if not Path(agent.__file__).is_relative_to(release):
        raise SystemExit(f"the agent package came from {agent.__file__}, not {release}")
    from agent.domain import (
        Attempt,
        CronState,
        Dispatch,
        EventKind,
        Execution,
        FailureReason,
        Job,
        JobNote,
        Status,
        Trigger,
        TriggerKind,
        TriggerRequest,
    )
    from agent.spec import parse_document, service_documents
    from agent.store import Store

    with tempfile.TemporaryDirectory() as scratch:
        store = Store(Path(scratch) / "agent.db")
        documents = service_documents(DOCUMENT)
        for spec in parse_document(DOCUMENT):
            job = Job(spec, START, START, documents[spec.name])
            store.put_job(job, JobNote(EventKind.JOB_REGISTERED))

        def new_execution(number: int, job_name: str, trigger: Trigger) -> Execution:
            execution_id = f"{number:x}" * 32
            return Execution(
                id=execution_id,
                job_name=job_name,
                status=Status.PENDING,
                trigger=trigger,
                container_id=f"ja-{execution_id}",
                created_at=START + timedelta(minutes=number),
            )

        def at(execution: Execution, seconds: int) -> datetime:
            return execution.created_at + timedelta(seconds=seconds)

        def advance(execution: Execution, status: Status, **changes: Any) -> Execution:
            changed = replace(execution, status=status, **changes)
            store.transition(execution.status, changed)
            return changed

        def start_attempt(execution: Execution, number: int, seconds: int) -> Attempt:
            attempt = Attempt(number, f"{execution.container_id}-{number}", at(execution, seconds))
            store.transition(
                execution.status,
                replace(execution, attempt=number),
                EventKind.ATTEMPT_STARTED,
                f"attempt {number} started",
                attempt,
            )
            return attempt

        def end_attempt(execution: Execution, attempt: Attempt, code: int, seconds: int) -> Attempt:
            return replace(
                attempt,
                finished_at=at(execution, seconds),
                exit_code=code,
                failure_reason=None if code == 0 else FailureReason.EXIT_CODE,
                message=f"exited {code}",
            )

        # hello: triggered from the CLI, completed.
        hello = new_execution(1, "hello", Trigger(TriggerKind.CLI, "unix:", "by hand"))
        store.insert_execution(hello)
        hello = advance(hello, Status.INITIALIZING, started_at=at(hello, 1), image=DIGEST)
        hello = advance(hello, Status.RUNNING)
        attempt = start_attempt(hello, 1, 1)
        done = end_attempt(hello, attempt, 0, 2)
        finished = replace(hello, status=Status.COMPLETED, exit_code=0, finished_at=at(hello, 2))
        store.transition(Status.RUNNING, finished, attempt=done)

        # params: dispatched with a payload, an init step, a retry, then failed for good.
        params = new_execution(2, "params", Trigger(TriggerKind.ENDPOINT, "ipv4:127.0.0.1:40000"))
        dispatch = Dispatch(("--fast",), {"NAME": "x"}, b"payload bytes")
        store.insert_execution(params, TriggerRequest("req-1", dispatch, "alice"), "print")
        params = advance(params, Status.INITIALIZING, started_at=at(params, 1), image=DIGEST)
        store.append_event(params, EventKind.INIT_STEP_STARTED, "settle", "init.sleep")
        store.append_event(params, EventKind.INIT_STEP_SUCCEEDED, "settle", "slept 1s")
        params = advance(params, Status.RUNNING)
        first = end_attempt(params, start_attempt(params, 1, 2), 3, 3)
        store.transition(
            Status.RUNNING, params, EventKind.ATTEMPT_FAILED, "attempt 1 exited 3", first
        )
        params = replace(params, attempt=2)
        second = end_attempt(params, start_attempt(params, 2, 5), 3, 6)
        failed = replace(
            params,
            status=Status.FAILED,
            exit_code=3,
            failure_reason=FailureReason.EXIT_CODE,
            message="exited 3",
            finished_at=at(params, 6),
        )
        store.transition(Status.RUNNING, failed, attempt=second)

        # nightly: a schedule the suspended cron job missed.
        missed = START + timedelta(hours=3)
        note = JobNote(EventKind.SCHEDULE_MISSED, "suspended", missed)
        store.put_cron_state("nightly", CronState(missed, "", 0, 1), note)
        store.close()

        database = sqlite3.connect(Path(scratch) / "agent.db")
        output.write_text("\n".join(database.iterdump()) + "\n")
        database.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]))
