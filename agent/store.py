"""SQLite store: jobs, executions and their events, with a node-wide event sequence.

Every state change is one transaction that also appends an event, so a watcher that
resumes from a sequence number sees every later change once and in order.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from agent import hostfs
from agent.diskspace import is_no_space
from agent.domain import (
    TERMINAL_STATUSES,
    Attempt,
    CronState,
    Dispatch,
    EventKind,
    Execution,
    ExecutionDetails,
    ExecutionEvent,
    ExecutionFilter,
    Job,
    JobEvent,
    JobNote,
    JobSpec,
    NodeEvent,
    Status,
    TriggerRequest,
)
from agent.errors import (
    AlreadyExists,
    DataLoss,
    DiskFull,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    StoreStalled,
)
from agent.records import field_names, format_time, from_record, parse_time, to_record
from agent.walcheckpoint import LogCheckpointer, is_busy

T = TypeVar("T")
# Executions whose details (execution, attempts, request) are kept in memory after a read:
# schedulers poll the same few executions while they run and just after they finish.
DETAILS_CACHE = 1024
# The write-ahead log's length, in pages, past which a commit checkpoints it itself: a
# safety net. Store.checkpoint, called each second from a worker thread, keeps it short
# (see agent.walcheckpoint); under a steady stream of commits its passes may never copy the
# whole log, and then a commit here copies the rest: 16 MiB of 4 KiB pages.
COMMIT_CHECKPOINT_PAGES = 4096
# How long a write waits for the database while another holds it: the checkpointer's write,
# syncing the log's header (7-25 ms here on a working disk, under 3 GB of writeback too),
# or another process's transaction. A write that waited this long finds the disk hung or
# failing, or the database held open: it fails (StoreStalled), and so does every write
# after it, at once, until one goes through. The event loop waits this long once, not
# once per write.
STALL_SECONDS = 2.0
# How soon what waits for a stalled store (a run's start, a cron time) tries again.
STALL_RETRY_SECONDS = 1.0
STALLED = (
    f"the store cannot write now: a write waited {STALL_SECONDS:g} s for its database (a "
    "disk that does not finish a write, or another process holding a write transaction "
    "open); until a write goes through, writes are refused without waiting"
)
# Today's tables. Migration 1 creates them in a new database, and brings a database
# written before migrations were numbered (user_version 0 with tables) to the same layout.
TABLES = (
    """CREATE TABLE IF NOT EXISTS jobs (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    spec_yaml TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY,
    job_name TEXT NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    container_id TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    exit_code INTEGER,
    failure_reason TEXT,
    message TEXT NOT NULL,
    image TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    trigger_kind TEXT NOT NULL DEFAULT ''
)""",
    "CREATE INDEX IF NOT EXISTS executions_by_job ON executions (job_name, created_at)",
    "CREATE INDEX IF NOT EXISTS executions_by_status ON executions (status)",
    """CREATE TABLE IF NOT EXISTS events (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    execution TEXT NOT NULL,
    kind TEXT NOT NULL,
    step_id TEXT NOT NULL,
    message TEXT NOT NULL,
    job_name TEXT NOT NULL DEFAULT '',
    schedule_time TEXT
)""",
    "CREATE INDEX IF NOT EXISTS events_by_execution ON events (execution_id, sequence)",
    """CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS cron_state (
    job_name TEXT PRIMARY KEY,
    last_schedule_time TEXT,
    last_execution_id TEXT NOT NULL DEFAULT '',
    skipped INTEGER NOT NULL DEFAULT 0,
    missed INTEGER NOT NULL DEFAULT 0
)""",
    """CREATE TABLE IF NOT EXISTS trigger_requests (
    execution_id TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    caller TEXT NOT NULL DEFAULT '',
    fingerprint TEXT NOT NULL,
    args TEXT NOT NULL,
    env TEXT NOT NULL,
    payload BLOB NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS attempts (
    execution_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    container_id TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    exit_code INTEGER,
    failure_reason TEXT,
    message TEXT NOT NULL,
    PRIMARY KEY (execution_id, number)
)""",
    """CREATE TABLE IF NOT EXISTS user_ranges (
    job_name TEXT PRIMARY KEY,
    slot INTEGER NOT NULL UNIQUE
)""",
)
# A request_id is unique per caller (it was unique node-wide once: trigger_requests_by_id).
REQUESTS_BY_CALLER = (
    "CREATE UNIQUE INDEX IF NOT EXISTS trigger_requests_by_caller "
    "ON trigger_requests (caller, request_id) WHERE request_id != ''"
)
# Columns that tables written by still older agents lack.
ADDED_COLUMNS = {
    "events": {
        "kind": f"TEXT NOT NULL DEFAULT '{EventKind.TRANSITION.value}'",
        "step_id": "TEXT NOT NULL DEFAULT ''",
        "message": "TEXT NOT NULL DEFAULT ''",
        "job_name": "TEXT NOT NULL DEFAULT ''",
        "schedule_time": "TEXT",
    },
    "trigger_requests": {
        "caller": "TEXT NOT NULL DEFAULT ''",
    },
    "executions": {
        "attempt": "INTEGER NOT NULL DEFAULT 1",
        "trigger_kind": "TEXT NOT NULL DEFAULT ''",
    },
}

log = logging.getLogger(__name__)
EVENT_COLUMNS = (
    "sequence, time, execution_id, execution, kind, step_id, message, job_name, schedule_time"
)
# An execution's row and its snapshot in an event hold its fields by name; the queue
# position is derived when read, never stored.
EXECUTION_FIELDS = tuple(name for name in field_names(Execution) if name != "queue_position")
EXECUTION_COLUMNS = ", ".join(EXECUTION_FIELDS)
# What a transition may change of an execution's row: all but what names it and its start.
FIXED_FIELDS = frozenset({"id", "job_name", "trigger", "created_at"})
CHANGING_FIELDS = tuple(name for name in EXECUTION_FIELDS if name not in FIXED_FIELDS)
TRANSITION_UPDATE = (
    f"UPDATE executions SET {', '.join(f'{name} = :{name}' for name in CHANGING_FIELDS)} "
    "WHERE id = :id AND status = :expected"
)
ATTEMPT_COLUMNS = ", ".join(field_names(Attempt))
# The layout of a stored spec: {"schema_version": SPEC_VERSION, "spec": its record}.
SPEC_VERSION = 1


def _tables(db: sqlite3.Connection) -> None:
    """today's tables (a database from before numbered migrations: the columns it lacks)"""
    for statement in TABLES:
        db.execute(statement)
    for table, added in ADDED_COLUMNS.items():
        _add_columns(db, table, added)
    db.execute("DROP INDEX IF EXISTS trigger_requests_by_id")
    db.execute(REQUESTS_BY_CALLER)


def _add_columns(db: sqlite3.Connection, table: str, added: dict[str, str]) -> None:
    """Adds the columns (name: definition) that the table lacks."""
    columns = {row["name"] for row in db.execute(f"PRAGMA table_info({table})")}
    for name, definition in added.items():
        if name not in columns:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")


def _records_by_name(db: sqlite3.Connection) -> None:
    """specs in their versioned layout, execution snapshots by field name"""
    for row in db.execute("SELECT name, spec FROM jobs").fetchall():
        spec = _json_or_none(row["spec"])
        # A row that is not JSON stays as it is: reading it says DataLoss, as before.
        if isinstance(spec, dict) and "schema_version" not in spec:
            stored = json.dumps({"schema_version": SPEC_VERSION, "spec": spec})
            db.execute("UPDATE jobs SET spec = ? WHERE name = ?", (stored, row["name"]))
    query = "SELECT sequence, execution FROM events WHERE execution_id != ''"
    for row in db.execute(query).fetchall():
        snapshot = _json_or_none(row["execution"])
        if isinstance(snapshot, list):
            record = dict(zip(POSITIONAL_EXECUTION, snapshot, strict=False))
            record["trigger"] = _json_or_none(record["trigger"])
            db.execute(
                "UPDATE events SET execution = ? WHERE sequence = ?",
                (json.dumps(record), row["sequence"]),
            )


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


# The order in which agents before migration 2 wrote an execution's snapshot (as a JSON list,
# the trigger as JSON text); the oldest ones end before attempt.
POSITIONAL_EXECUTION = (
    "id",
    "job_name",
    "status",
    "trigger",
    "container_id",
    "created_at",
    "started_at",
    "finished_at",
    "exit_code",
    "failure_reason",
    "message",
    "image",
    "attempt",
)


# Numbered by position: migration N brings a database from user_version N-1 to N. Each
# docstring says, for the log, what it did.
def _spec_per_execution(db: sqlite3.Connection) -> None:
    """each execution names the version of its job's spec it was triggered with (one
    written before runs its job's spec as registered)"""
    db.execute(
        """CREATE TABLE IF NOT EXISTS job_specs (
    job_name TEXT NOT NULL,
    version TEXT NOT NULL,
    spec TEXT NOT NULL,
    PRIMARY KEY (job_name, version)
)"""
    )
    _add_columns(db, "executions", {"spec_version": "TEXT NOT NULL DEFAULT ''"})


def _job_pages_in_order(db: sqlite3.Connection) -> None:
    """one job's executions are listed newest first from an index in that order: the
    index by job and creation time had them sorted anew for each page (1,000 of a job's
    whole rows for a page of 100)"""
    # An index holds each row's rowid after its columns: this one is in (job, rowid) order.
    db.execute("CREATE INDEX IF NOT EXISTS executions_by_job_rowid ON executions (job_name)")


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _tables,
    _records_by_name,
    _spec_per_execution,
    _job_pages_in_order,
)


class StaleTransition(FailedPrecondition):
    """The execution was no longer in the status the transition started from."""


class Store:
    """The agent's embedded database (one file, WAL mode)."""

    def __init__(self, path: Path) -> None:
        hostfs.make_dir(path.parent)
        # Job env, dispatch env and payloads are in here: root's only. SQLite gives the
        # -wal and -shm files the database file's mode.
        hostfs.create_file(path, hostfs.PRIVATE_FILE)
        self._path = path
        # Write transactions committed since the store opened (sync_to_disk's caller
        # compares them to know whether there is anything to make durable).
        self.commits = 0
        self._db = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=STALL_SECONDS
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        for suffix in ("-wal", "-shm"):
            hostfs.tighten(path.with_name(path.name + suffix), hostfs.PRIVATE_FILE)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA wal_autocheckpoint={COMMIT_CHECKPOINT_PAGES}")
        self._db.execute("PRAGMA foreign_keys=ON")
        # Held around each write transaction of _db's, and by the checkpointer's own write.
        self._write_lock = threading.Lock()
        # True from a write that waited STALL_SECONDS in vain to the next that goes through.
        self._stalled = False
        self._migrate()
        self._checkpointer = LogCheckpointer(path, self._write_lock)
        # Copies in what recovery found and starts the log here, before any commit of the
        # event loop's would. A failure (a full disk) is the sync pass's to retry: the
        # agent still starts, and refuses what the disk cannot take.
        try:
            self._checkpointer.checkpoint()
        except OSError as error:
            log.warning("the store's log was not checkpointed at start: %s", error)
        # Names of job rows found unreadable (each is logged once).
        self._unreadable: set[str] = set()
        # Details of executions read lately, least recently read first. Every write that
        # touches an execution (insert_execution, transition, delete_executions) drops its
        # entry, so an entry is what the database holds.
        self._details: OrderedDict[str, ExecutionDetails] = OrderedDict()

    def _migrate(self) -> None:
        """Applies the migrations after the database's user_version, each in a transaction
        that records its number. A database from before numbered migrations has version 0,
        as a new one does: migration 1 brings either to the first numbered layout."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()["user_version"])
        written = self._db.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone()
        if version > len(MIGRATIONS):
            raise FailedPrecondition(
                f"the database has schema version {version}, written by a newer agent; "
                f"this agent reads up to {len(MIGRATIONS)}"
            )
        for number, migration in enumerate(MIGRATIONS[version:], start=version + 1):
            with self._transaction() as db:
                migration(db)
                db.execute(f"PRAGMA user_version = {number}")
            if written:
                log.info("store migrated to schema version %d: %s", number, migration.__doc__)

    def close(self) -> None:
        """Closes the database (never waiting for a checkpoint under way)."""
        self._checkpointer.close()
        self._db.close()

    def sync_to_disk(self) -> None:
        """Makes every transaction committed so far durable: fdatasync(2) of the write-ahead
        log (a commit does not wait for the disk: synchronous=NORMAL). It touches the file,
        not a connection: call it from a worker thread. Raises OSError."""
        log_path = self._path.with_name(self._path.name + "-wal")
        try:
            descriptor = os.open(log_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            descriptor = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fdatasync(descriptor)
        finally:
            os.close(descriptor)

    def checkpoint(self) -> None:
        """Copies the write-ahead log into the database file and starts it again, on a
        connection of its own (agent.walcheckpoint): call it from a worker thread, so that
        commits on the loop seldom do either. Raises OSError."""
        self._checkpointer.checkpoint()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. DiskFull when the filesystem has no room for it;
        StoreStalled when the database stays locked (see STALL_SECONDS).

        A failed statement or COMMIT rolls back (SQLite may have done so already), so the
        connection is always fit for the next transaction.
        """
        # No read of _db's may be left open across a write (a cursor not run to its end):
        # after another connection's write, its BEGIN IMMEDIATE would fail at once
        # (SQLITE_BUSY_SNAPSHOT). Every read here runs to its end before returning.
        if not self._write_lock.acquire(timeout=0 if self._stalled else STALL_SECONDS):
            raise self._stall(None)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            # Both locks are held: the stall, if any, is over, whatever the body does.
            self._unstall()
            try:
                yield self._db
                self._db.execute("COMMIT")
                self.commits += 1
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            if is_no_space(error):
                raise DiskFull(f"disk is full: the store cannot write: {error}") from error
            # BUSY_SNAPSHOT comes at once, from a read left open (a bug), not from a wait.
            if is_busy(error) and error.sqlite_errorcode != sqlite3.SQLITE_BUSY_SNAPSHOT:
                raise self._stall(error) from error
            raise
        finally:
            self._write_lock.release()

    def try_write(self) -> bool:
        """A write transaction that writes nothing: True when the store takes writes (and
        so is no longer stalled). While stalled, it fails at once."""
        try:
            with self._transaction():
                return True
        except StoreStalled:
            return False

    @property
    def stalled(self) -> bool:
        """True from a write that waited STALL_SECONDS in vain to the next that goes through."""
        return self._stalled

    def _unstall(self) -> None:
        if self._stalled:
            self._stalled = False
            self._db.execute(f"PRAGMA busy_timeout = {int(STALL_SECONDS * 1000)}")
            log.info("the store writes again")

    def _stall(self, error: sqlite3.Error | None) -> StoreStalled:
        """Marks the store stalled (the next writes wait for nothing) and says why."""
        if not self._stalled:
            self._stalled = True
            self._db.execute("PRAGMA busy_timeout = 0")
            log.error("%s%s", STALLED, f" ({error})" if error else "")
        return StoreStalled(STALLED)

    # Jobs

    def put_job(
        self, job: Job, note: JobNote | None = None, cron_state: CronState | None = None
    ) -> JobEvent | None:
        """Inserts or replaces a job (and its cron state) and records the job event if any.
        A job's updated_at names the version of its spec: a changed spec needs a new one
        (executions keep the version they were triggered with)."""
        self._unreadable.discard(job.name)
        with self._transaction() as db:
            if cron_state is not None:
                _put_cron_state(db, job.name, cron_state)
            return _put_job(db, job, note)

    def put_jobs(
        self, changes: Sequence[tuple[Job, JobNote | None]], ranged: Collection[str], slots: int
    ) -> list[JobEvent]:
        """Puts each job with its job event, if any, and gives each job named in `ranged`
        one of `slots` user id ranges (user_range_slot), in one transaction: either all of
        it is written or none. Returns the job events. Raises ResourceExhausted when no
        range is free."""
        with self._transaction() as db:
            events = [event for job, note in changes if (event := _put_job(db, job, note))]
            for name in ranged:
                _take_user_range(db, name, slots)
        self._unreadable.difference_update(job.name for job, _ in changes)
        return events

    def get_job(self, name: str) -> Job:
        """Returns the job; raises NotFound."""
        row = self._db.execute("SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f"job {name!r} is not registered")
        return _job_from_row(row)

    def list_jobs(self, after: str = "", limit: int | None = None) -> list[Job]:
        """Returns the jobs named after `after` (every job by default), by name.

        A row that cannot be read is left out (and logged once): one damaged job never
        hides the others. get_job of its name raises DataLoss.
        """
        jobs: list[Job] = []
        rows = self._db.execute("SELECT * FROM jobs WHERE name > ? ORDER BY name", (after,))
        for row in rows:
            if limit is not None and len(jobs) >= limit:
                break
            try:
                jobs.append(_job_from_row(row))
            except DataLoss as error:
                if row["name"] not in self._unreadable:
                    self._unreadable.add(row["name"])
                    log.error("%s; it is left out until it is replaced or unregistered", error)
        return jobs

    def get_cron_state(self, name: str) -> CronState:
        """What the scheduler recorded of a cron job (empty before its first schedule)."""
        row = self._db.execute("SELECT * FROM cron_state WHERE job_name = ?", (name,)).fetchone()
        return CronState() if row is None else _from_row(CronState, row)

    def put_cron_state(
        self, name: str, state: CronState, note: JobNote | None = None
    ) -> JobEvent | None:
        """Records what the scheduler did for a cron job, with the job event if any."""
        with self._transaction() as db:
            _put_cron_state(db, name, state)
            return None if note is None else _append_job_event(db, name, note)

    def delete_job(self, name: str) -> JobEvent:
        """Removes a job and records JOB_UNREGISTERED; raises NotFound."""
        with self._transaction() as db:
            if db.execute("DELETE FROM jobs WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"job {name!r} is not registered")
            db.execute("DELETE FROM cron_state WHERE job_name = ?", (name,))
            db.execute("DELETE FROM user_ranges WHERE job_name = ?", (name,))
            return _append_job_event(db, name, JobNote(EventKind.JOB_UNREGISTERED))

    # User id ranges

    def user_range_slot(self, job_name: str, slots: int) -> int:
        """The job's slot among `slots` id ranges: the one it holds, else the lowest free one,
        held until the job is unregistered. Raises ResourceExhausted when none is free."""
        with self._transaction() as db:
            return _take_user_range(db, job_name, slots)

    def free_user_range_slots(self, slots: int) -> int:
        """How many of `slots` id ranges no job holds."""
        row = self._db.execute(
            "SELECT COUNT(*) AS held FROM user_ranges WHERE slot < ?", (slots,)
        ).fetchone()
        return slots - int(row["held"])

    def has_user_range(self, job_name: str) -> bool:
        """True when the job holds an id range."""
        query = "SELECT 1 FROM user_ranges WHERE job_name = ?"
        return self._db.execute(query, (job_name,)).fetchone() is not None

    # Executions

    def insert_execution(
        self,
        execution: Execution,
        request: TriggerRequest | None = None,
        fingerprint: str = "",
        cron_state: CronState | None = None,
    ) -> ExecutionEvent:
        """Records a new execution and its first event, with the trigger's request if it has
        a request_id or parameters (raises AlreadyExists for a request_id in use), and the
        cron state of the schedule time it runs for, if any: one never without the other."""
        self._details.pop(execution.id, None)
        record = _execution_record(execution)
        with self._transaction() as db:
            if cron_state is not None:
                _put_cron_state(db, execution.job_name, cron_state)
            _insert(db, "executions", _execution_columns(record))
            # The job's spec as it is now, kept for this execution (a job's updated_at
            # names the version of its spec).
            db.execute(
                "INSERT OR IGNORE INTO job_specs (job_name, version, spec) "
                "SELECT name, updated_at, spec FROM jobs WHERE name = ?",
                (execution.job_name,),
            )
            db.execute(
                "UPDATE executions SET spec_version = "
                "COALESCE((SELECT updated_at FROM jobs WHERE name = ?), '') WHERE id = ?",
                (execution.job_name, execution.id),
            )
            if request is not None and (request.request_id or not request.dispatch.empty):
                dispatch = request.dispatch
                try:
                    db.execute(
                        "INSERT INTO trigger_requests (execution_id, request_id, caller, "
                        "fingerprint, args, env, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            execution.id,
                            request.request_id,
                            request.caller,
                            fingerprint,
                            json.dumps(list(dispatch.args)),
                            json.dumps(dict(dispatch.env)),
                            dispatch.payload,
                        ),
                    )
                except sqlite3.IntegrityError:
                    raise AlreadyExists(f"request_id {request.request_id!r} is in use") from None
            return _append_event(db, execution, snapshot=record)

    def find_request(self, request_id: str, caller: str = "") -> tuple[str, str] | None:
        """The execution id and fingerprint recorded for a caller's request_id, if any."""
        row = self._db.execute(
            "SELECT execution_id, fingerprint FROM trigger_requests "
            "WHERE caller = ? AND request_id = ?",
            (caller, request_id),
        ).fetchone()
        return None if row is None else (row["execution_id"], row["fingerprint"])

    def get_request(self, execution_id: str) -> TriggerRequest:
        """The request_id and parameters an execution was triggered with (empty if none)."""
        row = self._db.execute(
            "SELECT * FROM trigger_requests WHERE execution_id = ?", (execution_id,)
        ).fetchone()
        if row is None:
            return TriggerRequest()
        dispatch = Dispatch(
            tuple(json.loads(row["args"])), json.loads(row["env"]), bytes(row["payload"])
        )
        return TriggerRequest(row["request_id"], dispatch, row["caller"])

    def transition(
        self,
        expected: Status,
        execution: Execution,
        kind: EventKind = EventKind.TRANSITION,
        message: str = "",
        attempt: Attempt | None = None,
    ) -> ExecutionEvent:
        """Writes `execution` (and `attempt`) if the stored one is still in `expected` status.

        Raises StaleTransition otherwise: a late writer can never overwrite a newer state.
        """
        self._details.pop(execution.id, None)
        record = _execution_record(execution)
        with self._transaction() as db:
            updated = db.execute(
                TRANSITION_UPDATE, {**_execution_columns(record), "expected": expected.value}
            ).rowcount
            if updated == 0:
                current = self.get_execution(execution.id)
                raise StaleTransition(
                    f"execution {execution.id} is {current.status.value}, not {expected.value}"
                )
            if attempt is not None:
                row = {"execution_id": execution.id, **to_record(attempt)}
                _insert(db, "attempts", row, "INSERT OR REPLACE")
            return _append_event(db, execution, kind, "", message, record)

    def list_attempts(self, execution_id: str) -> list[Attempt]:
        """The execution's attempts, first to last."""
        rows = self._db.execute(
            f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE execution_id = ? ORDER BY number",
            (execution_id,),
        ).fetchall()
        return [_from_row(Attempt, row) for row in rows]

    def execution_spec(self, execution_id: str) -> JobSpec | None:
        """The job's spec as it was when the execution was triggered; None for an execution
        recorded before specs were kept per execution. Raises DataLoss for a spec it
        cannot read."""
        row = self._db.execute(
            "SELECT job_specs.spec FROM executions JOIN job_specs "
            "ON job_specs.job_name = executions.job_name "
            "AND job_specs.version = executions.spec_version WHERE executions.id = ?",
            (execution_id,),
        ).fetchone()
        if row is None:
            return None
        try:
            return read_spec(row["spec"])
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            raise DataLoss(
                f"the spec kept for execution {execution_id} cannot be read: {error!r}"
            ) from None

    def describe_execution(self, execution_id: str) -> ExecutionDetails:
        """The execution, its attempts and its trigger's request; raises NotFound. They are
        read once, then the same object is handed out until a write touches the execution
        (for DETAILS_CACHE executions at most)."""
        details = self._details.pop(execution_id, None)
        if details is None:
            details = ExecutionDetails(
                self.get_execution(execution_id),
                tuple(self.list_attempts(execution_id)),
                self.get_request(execution_id),
            )
        self._details[execution_id] = details
        if len(self._details) > DETAILS_CACHE:
            self._details.popitem(last=False)
        return details

    def get_execution(self, execution_id: str) -> Execution:
        """Returns the execution; raises NotFound."""
        row = self._db.execute(
            f"SELECT {EXECUTION_COLUMNS} FROM executions WHERE id = ?", (execution_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"execution {execution_id!r} does not exist")
        return _execution_from_row(row)

    def list_executions(
        self, job_name: str = "", statuses: frozenset[Status] | None = None
    ) -> list[Execution]:
        """Returns executions newest first, optionally of one job and in some statuses."""
        wanted = ExecutionFilter(job_name=job_name, statuses=statuses or frozenset())
        if statuses is not None and not statuses:
            return []
        return self.page_executions(wanted, limit=None)[0]

    def page_executions(
        self, wanted: ExecutionFilter, limit: int | None, after: int | None = None
    ) -> tuple[list[Execution], int | None]:
        """A page of executions newest first, after the row `after` (a previous page's
        cursor); returns the page and the cursor of the next one (None after the last).

        Newest first by insertion, so executions added meanwhile never shift later pages.
        """
        clauses: list[str] = []
        params: list[Any] = []
        if wanted.job_name:
            clauses.append("job_name = ?")
            params.append(wanted.job_name)
        for column, values in (("status", wanted.statuses), ("trigger_kind", wanted.triggers)):
            if values:
                clauses.append(f"{column} IN ({', '.join('?' for _ in values)})")
                params.extend(value.value for value in values)
        if wanted.created_after is not None:
            clauses.append("created_at >= ?")
            params.append(format_time(wanted.created_after))
        if wanted.created_before is not None:
            clauses.append("created_at < ?")
            params.append(format_time(wanted.created_before))
        if after is not None:
            clauses.append("rowid < ?")
            params.append(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(
            f"SELECT rowid AS cursor, {EXECUTION_COLUMNS} FROM executions {where} "
            "ORDER BY rowid DESC" + ("" if limit is None else " LIMIT ?"),
            params if limit is None else [*params, limit + 1],
        ).fetchall()
        more = limit is not None and len(rows) > limit
        rows = rows[:limit] if limit is not None else rows
        page = [_execution_from_row(row) for row in rows]
        return page, (rows[-1]["cursor"] if more else None)

    def append_event(
        self, execution: Execution, kind: EventKind, step_id: str = "", message: str = ""
    ) -> ExecutionEvent:
        """Records an event that changes nothing of the execution (an init step's progress)."""
        with self._transaction() as db:
            return _append_event(db, execution, kind, step_id, message)

    def expired_executions(self, older_than: datetime, keep_per_job: int) -> list[str]:
        """Finished executions finished before `older_than`, or beyond the newest
        `keep_per_job` finished ones of their job; never active ones."""
        terminal = tuple(status.value for status in TERMINAL_STATUSES)
        rows = self._db.execute(
            "SELECT id FROM ("
            "  SELECT id, finished_at, ROW_NUMBER() OVER ("
            "    PARTITION BY job_name ORDER BY finished_at DESC, rowid DESC) AS newer"
            "  FROM executions WHERE status IN (?, ?, ?)"
            ") WHERE finished_at < ? OR newer > ?",
            (*terminal, format_time(older_than), keep_per_job),
        ).fetchall()
        return [row["id"] for row in rows]

    def count_executions(self, status: Status) -> int:
        """How many executions are in `status`."""
        row = self._db.execute(
            "SELECT COUNT(*) AS n FROM executions WHERE status = ?", (status.value,)
        ).fetchone()
        return int(row["n"])

    def job_history(self, job_name: str) -> list[Execution]:
        """The job's finished executions, newest first."""
        return self.list_executions(job_name=job_name, statuses=TERMINAL_STATUSES)

    def delete_executions(self, execution_ids: list[str]) -> None:
        """Removes executions with their events and attempts."""
        if not execution_ids:
            return
        for execution_id in execution_ids:
            self._details.pop(execution_id, None)
        with self._transaction() as db:
            placeholders = ", ".join("?" for _ in execution_ids)
            row = db.execute(
                f"SELECT MAX(sequence) AS last FROM events WHERE execution_id IN ({placeholders})",
                execution_ids,
            ).fetchone()
            _compact_through(db, row["last"])
            for table, column in (
                ("events", "execution_id"),
                ("attempts", "execution_id"),
                ("trigger_requests", "execution_id"),
                ("executions", "id"),
            ):
                db.executemany(
                    f"DELETE FROM {table} WHERE {column} = ?", [(i,) for i in execution_ids]
                )
            db.execute(
                "DELETE FROM job_specs WHERE NOT EXISTS (SELECT 1 FROM executions "
                "WHERE executions.job_name = job_specs.job_name "
                "AND executions.spec_version = job_specs.version)"
            )

    def delete_job_events(self, older_than: datetime) -> int:
        """Removes job events recorded before `older_than`; returns how many."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT MAX(sequence) AS last FROM events WHERE execution_id = '' AND time < ?",
                (format_time(older_than),),
            ).fetchone()
            _compact_through(db, row["last"])
            return db.execute(
                "DELETE FROM events WHERE execution_id = '' AND time < ?",
                (format_time(older_than),),
            ).rowcount

    def node_events_after(self, sequence: int, limit: int = 1000) -> list[NodeEvent]:
        """Events of every execution and job after `sequence`, in order, at most `limit`."""
        rows = self._db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE sequence > ? ORDER BY sequence LIMIT ?",
            (sequence, limit),
        ).fetchall()
        return [_node_event_from_row(row) for row in rows]

    def compacted_through(self) -> int:
        """The highest sequence that retention removed: resuming below it would miss events."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'compacted_through'").fetchone()
        return int(row["value"]) if row else 0

    def last_sequence(self) -> int:
        """The newest event's sequence (0 before the first)."""
        row = self._db.execute("SELECT MAX(sequence) AS last FROM events").fetchone()
        return int(row["last"] or 0)

    def events_since(self, execution_id: str, sequence: int) -> list[ExecutionEvent]:
        """Returns the execution's events after `sequence`, in order."""
        rows = self._db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events "
            "WHERE execution_id = ? AND sequence > ? ORDER BY sequence",
            (execution_id, sequence),
        ).fetchall()
        return [_event_from_row(row) for row in rows]

    def last_event(self, execution_id: str) -> ExecutionEvent:
        """Returns the execution's newest event; raises NotFound."""
        row = self._db.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE execution_id = ? "
            "ORDER BY sequence DESC LIMIT 1",
            (execution_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"execution {execution_id!r} does not exist")
        return _event_from_row(row)


def _append_event(
    db: sqlite3.Connection,
    execution: Execution,
    kind: EventKind = EventKind.TRANSITION,
    step_id: str = "",
    message: str = "",
    snapshot: dict[str, Any] | None = None,
) -> ExecutionEvent:
    """Appends an event of the execution, with its snapshot (its record, when the caller
    has it already)."""
    now = datetime.now(UTC)
    cursor = db.execute(
        "INSERT INTO events (time, execution_id, execution, kind, step_id, message, job_name) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            format_time(now),
            execution.id,
            json.dumps(_execution_record(execution) if snapshot is None else snapshot),
            kind.value,
            step_id,
            message,
            execution.job_name,
        ),
    )
    assert cursor.lastrowid is not None
    return ExecutionEvent(cursor.lastrowid, now, execution, kind, step_id, message)


def _put_job(db: sqlite3.Connection, job: Job, note: JobNote | None) -> JobEvent | None:
    """Inserts or replaces the job's row, and appends its job event if any."""
    db.execute(
        "INSERT INTO jobs (name, spec, spec_yaml, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
        "spec = excluded.spec, spec_yaml = excluded.spec_yaml, "
        "updated_at = excluded.updated_at",
        (
            job.name,
            write_spec(job.spec),
            job.spec_yaml,
            format_time(job.created_at),
            format_time(job.updated_at),
        ),
    )
    return None if note is None else _append_job_event(db, job.name, note)


def _take_user_range(db: sqlite3.Connection, job_name: str, slots: int) -> int:
    """The job's id range slot: the one it holds, else the lowest free one (taken now)."""
    row = db.execute("SELECT slot FROM user_ranges WHERE job_name = ?", (job_name,)).fetchone()
    if row is not None and row["slot"] < slots:
        return int(row["slot"])
    taken = {r["slot"] for r in db.execute("SELECT slot FROM user_ranges")}
    free = next((slot for slot in range(slots) if slot not in taken), None)
    if free is None:
        raise ResourceExhausted(
            f"all {slots} user id ranges are held by registered jobs (--userns-range)"
        )
    db.execute(
        "INSERT INTO user_ranges (job_name, slot) VALUES (?, ?) "
        "ON CONFLICT(job_name) DO UPDATE SET slot = excluded.slot",
        (job_name, free),
    )
    return free


def _append_job_event(db: sqlite3.Connection, job_name: str, note: JobNote) -> JobEvent:
    """Job events have no execution: execution_id is empty."""
    now = datetime.now(UTC)
    schedule_time = None if note.schedule_time is None else format_time(note.schedule_time)
    cursor = db.execute(
        "INSERT INTO events (time, execution_id, execution, kind, step_id, message, job_name, "
        "schedule_time) VALUES (?, '', '', ?, '', ?, ?, ?)",
        (format_time(now), note.kind.value, note.message, job_name, schedule_time),
    )
    assert cursor.lastrowid is not None
    return JobEvent(cursor.lastrowid, now, job_name, note.kind, note.message, note.schedule_time)


def _put_cron_state(db: sqlite3.Connection, name: str, state: CronState) -> None:
    _insert(db, "cron_state", {"job_name": name, **to_record(state)}, "INSERT OR REPLACE")


def _insert(db: sqlite3.Connection, table: str, row: dict[str, Any], verb: str = "INSERT") -> None:
    """Writes a row given by column name."""
    columns = ", ".join(row)
    values = ", ".join(f":{name}" for name in row)
    db.execute(f"{verb} INTO {table} ({columns}) VALUES ({values})", row)


def _from_row(cls: type[T], row: sqlite3.Row) -> T:
    """The dataclass whose fields are the row's columns of the same names."""
    return from_record(cls, {name: row[name] for name in field_names(cls)})


def _compact_through(db: sqlite3.Connection, sequence: int | None) -> None:
    """Records that events up to `sequence` are gone (resuming below it is OUT_OF_RANGE)."""
    if sequence is not None:
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('compacted_through', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), excluded.value)",
            (sequence,),
        )


def _node_event_from_row(row: sqlite3.Row) -> NodeEvent:
    return _event_from_row(row) if row["execution_id"] else _from_row(JobEvent, row)


def _event_from_row(row: sqlite3.Row) -> ExecutionEvent:
    record = {name: row[name] for name in field_names(ExecutionEvent)}
    return from_record(ExecutionEvent, {**record, "execution": json.loads(row["execution"])})


def write_spec(spec: JobSpec) -> str:
    """A spec as stored: its record by field name, with the layout's version."""
    return json.dumps({"schema_version": SPEC_VERSION, "spec": to_record(spec)})


def read_spec(text: str) -> JobSpec:
    """The one reader of a stored spec; ValueError, TypeError or KeyError when the text is
    not a spec this agent writes (or wrote: fields added since take their defaults)."""
    stored = json.loads(text)
    if stored["schema_version"] != SPEC_VERSION:
        raise ValueError(f"spec layout {stored['schema_version']!r} is not {SPEC_VERSION}")
    return from_record(JobSpec, stored["spec"])


def _job_from_row(row: sqlite3.Row) -> Job:
    """A stored job; DataLoss when its row is not what this agent writes."""
    try:
        return Job(
            spec=read_spec(row["spec"]),
            created_at=parse_time(row["created_at"]),
            updated_at=parse_time(row["updated_at"]),
            spec_yaml=row["spec_yaml"],
        )
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        # json.JSONDecodeError and a bad enum value are ValueErrors; a missing or
        # unexpected field is a KeyError or TypeError.
        raise DataLoss(f"the stored job {row['name']!r} cannot be read: {error!r}") from None


def _execution_record(execution: Execution) -> dict[str, Any]:
    """An execution by field name, as an event's snapshot holds it."""
    record: dict[str, Any] = to_record(execution)
    del record["queue_position"]
    return record


def _execution_columns(record: dict[str, Any]) -> dict[str, Any]:
    """An execution's row of its record (_execution_record): the trigger as JSON text, and
    the trigger's kind in a column of its own for filters."""
    return {
        **record,
        "trigger": json.dumps(record["trigger"]),
        "trigger_kind": record["trigger"]["kind"],
    }


def _execution_from_row(row: sqlite3.Row) -> Execution:
    record = {name: row[name] for name in EXECUTION_FIELDS}
    return from_record(Execution, {**record, "trigger": json.loads(row["trigger"])})
