"""Soak: about ten minutes of mixed work on one agent, restarted twice, watching its
resident memory, open file descriptors and threads for a leak, and what is left at the end.

The agent (youki by default, user namespaces on as by default) pulls busybox from a
loopback registry (Debian's docker-registry on 127.0.0.1) and runs `--jobs` executions,
triggered at an even pace over `--minutes` by `--workers` threads, each a task of one kind:

- echo: a job that writes a line to stdout and one to stderr; both are read back
  (StreamLogBatches) and checked;
- true: `/bin/true`, waited for on WatchExecution;
- cancel: a job that sleeps, cancelled while pending or once it runs (its log followed
  until it says it started, that stream then dropped);
- fail: exits 3 every time: retried twice (backoff_limit 2), then Failed on attempt 3;
- flaky: fails its first attempt and succeeds on the retry (a named volume remembers);
- pull: the image from the registry with `pull_policy: always`.

Beside them: a cron job every five seconds, WatchEvents streams opened and dropped (by
the client after a few events, or by their deadline), and two agent restarts (SIGTERM
with work in flight, then a start on the same data directory) at a third and two thirds
of the jobs. Every `--interval` seconds the agent's RSS, open fds and threads are sampled;
each incarnation's least-squares slope per minute is printed (after `--warmup` seconds of
it). At the end, once idle and again once the agent has stopped: the mounts, cgroups,
processes, runtime state, bundles, exit records, attach sockets, writable layers, pulls in
flight and logs without an execution that are left. The exit status is 1 when anything is
left, an execution is stuck non-terminal, or an execution ended other than expected.

    python -m bench.soak [--runtime youki] [--minutes 10] [--jobs 10000] [--workers 16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import random
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc
from jobagent_client import ClientError, JobAgentClient
from jobagent_client.models import Execution

from bench.common import RESULTS, machine, scratch_parent
from tests import tools
from tests.e2e.harness import (
    REQUIRED_BINARIES,
    AgentProcess,
    Registry,
    build_example_image,
    sweep,
)

T = TypeVar("T")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Codes a call is repeated on: the agent is restarting, or too many streams are open.
RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
# How long a call keeps being repeated before the task counts as a failure.
RETRY_SECONDS = 120.0
# Each kind of task and its share, in tasks of every 100.
MIX = (("echo", 66), ("true", 15), ("cancel", 6), ("fail", 5), ("flaky", 5), ("pull", 3))
CRON_JOB = "soak-cron"
# Executions running when the agent is stopped for a restart.
SPANS = 4
ACTIVE = ("pending", "initializing", "running")


def deployment(registry: str) -> str:
    """The soak's jobs; `registry` is host:port of the loopback registry."""
    image = "{name: busybox:latest, pull_policy: never}"
    return f"""version: v1
deployment: soak
services:
  soak-true:
    rtype: job
    image: {image}
    command: {{entrypoint: [/bin/true]}}
  soak-echo:
    rtype: job
    image: {image}
    command: {{entrypoint: [/bin/sh, -c, 'echo "out $0"; echo "err $0" >&2']}}
    dispatch: {{args: true}}
  soak-sleep:
    rtype: job
    image: {image}
    command: {{entrypoint: [/bin/sh, -c, 'trap "exit 143" TERM; echo started; sleep 60 & wait']}}
    stop_grace_period: 2s
  soak-fail:
    rtype: job
    image: {image}
    command: {{entrypoint: [/bin/sh, -c, 'echo "attempt failing"; exit 3']}}
    backoff_limit: 2
    retry_policy: {{initial_delay: 100ms, max_delay: 200ms}}
  soak-flaky:
    rtype: job
    image: {image}
    command:
      entrypoint: [/bin/sh, -c, 'if rm /state/$0 2>/dev/null; then echo ok; else
        touch /state/$0; exit 1; fi']
    dispatch: {{args: true}}
    storage: [{{type: named, name: soak-flaky, target: /state}}]
    backoff_limit: 2
    retry_policy: {{initial_delay: 100ms, max_delay: 200ms}}
  soak-pull:
    rtype: job
    image: {{name: '{registry}/busybox:latest', pull_policy: always}}
    command: {{entrypoint: [/bin/true]}}
  soak-span:
    rtype: job
    image: {image}
    command: {{entrypoint: [/bin/sh, -c, 'echo "before $0"; sleep 3; echo after']}}
    dispatch: {{args: true}}
  {CRON_JOB}:
    rtype: cron
    schedule: '*/5 * * * * *'
    concurrency_policy: forbid
    image: {image}
    command: {{entrypoint: [/bin/sh, -c, 'echo tick']}}
"""


@dataclass(frozen=True, kw_only=True)
class Sample:
    """The agent process at one moment."""

    seconds: float
    incarnation: int
    pid: int
    rss_mb: float
    fds: int
    threads: int
    cpu_seconds: float
    done: int


def sample_process(pid: int) -> tuple[float, int, int, float] | None:
    """RSS in MB, open fds, threads and CPU seconds of a process; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_mb = int(fields["VmRSS"].split()[0]) / 1024
    threads = int(fields["Threads"])
    cpu = (int(stat[11]) + int(stat[12])) / CLOCK_TICKS
    return rss_mb, fds, threads, cpu


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of (seconds, value) points, per minute; 0 for fewer than 2."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return 60 * covariance / spread


@dataclass
class Connection:
    """One incarnation's client and raw stub (a restarted agent gets new ones)."""

    client: JobAgentClient
    channel: grpc.Channel
    stub: service_grpc.JobServiceStub


@dataclass
class Tally:
    """What the tasks did, counted under one lock."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def add(self, key: str, amount: int = 1) -> None:
        """Adds to a count."""
        with self.lock:
            self.counts[key] += amount

    def problem(self, text: str) -> None:
        """Records an execution that ended other than expected (the first 20 kept)."""
        with self.lock:
            self.counts["unexpected"] += 1
            if len(self.problems) < 20:
                self.problems.append(text)


class Soak:
    """The agent under soak, the work on it and the samples of it."""

    def __init__(self, agent: AgentProcess, cgroup_parent: str, args: argparse.Namespace) -> None:
        self.agent = agent
        self.cgroup_parent = cgroup_parent
        self.args = args
        self.tally = Tally()
        self.samples: list[Sample] = []
        self.serving = threading.Event()
        self.stopping = threading.Event()
        self.incarnation = 0
        self.started = time.monotonic()
        self.executions: list[str] = []
        self._connections: list[Connection] = []
        self._watchers: list[threading.Thread] = []
        self._spans: list[threading.Thread] = []
        self._connect()

    # The agent and its connections.

    def _connect(self) -> None:
        channel = grpc.insecure_channel(self.agent.target)
        self._connections.append(
            Connection(self.agent.client(), channel, service_grpc.JobServiceStub(channel))
        )
        self.incarnation += 1
        self.serving.set()

    @property
    def connection(self) -> Connection:
        """The current incarnation's connection."""
        return self._connections[-1]

    def restart(self) -> None:
        """Stops the agent with SIGTERM, work in flight, and starts it on the same data.
        SPANS executions are running when it stops, so that some always are: they must
        complete after the restart, with their whole log."""
        running = [threading.Event() for _ in range(SPANS)]
        for index, event in enumerate(running):
            thread = threading.Thread(target=self.span, args=(index, event), daemon=True)
            thread.start()
            self._spans.append(thread)
        for event in running:
            event.wait(30)
        self.serving.clear()
        self.sample()
        before = self.agent.process.pid if self.agent.process else 0
        started = time.monotonic()
        self.agent.stop(signal.SIGTERM)
        stopped = time.monotonic()
        self.agent.start()
        self._connect()
        pid = self.agent.process.pid if self.agent.process else 0
        print(
            f"  restart: agent {before} stopped in {stopped - started:.1f} s, "
            f"agent {pid} serving {time.monotonic() - stopped:.1f} s later",
            flush=True,
        )
        self.sample()

    def close(self) -> None:
        """Closes every connection made."""
        for connection in self._connections:
            connection.client.close()
            connection.channel.close()

    def call(self, action: Callable[[Connection], T]) -> T:
        """`action` on the current connection, repeated while the agent restarts (or has
        too many streams open), for up to RETRY_SECONDS. A call that ends CANCELLED while
        the agent restarts is repeated too, and counted (`calls_cancelled_by_restart`)."""
        deadline = time.monotonic() + RETRY_SECONDS
        while True:
            self.serving.wait(RETRY_SECONDS)
            connection = self.connection
            try:
                return action(connection)
            except ClientError as error:
                code = error.code
                if not self._repeats(code, connection, deadline):
                    raise
            except grpc.RpcError as error:
                code = error.code()
                if not self._repeats(code, connection, deadline):
                    raise
            self.tally.add("calls_repeated")
            time.sleep(0.2 + random.random() * 0.3)

    def _repeats(self, code: grpc.StatusCode, connection: Connection, deadline: float) -> bool:
        if time.monotonic() > deadline:
            return False
        if code is grpc.StatusCode.CANCELLED and (
            not self.serving.is_set() or connection is not self.connection
        ):
            self.tally.add("calls_cancelled_by_restart")
            return True
        return code in RETRIED

    # Samples.

    def sample(self) -> Sample | None:
        """Samples the agent process now (None while none runs)."""
        process = self.agent.process
        if process is None:
            return None
        measured = sample_process(process.pid)
        if measured is None:
            return None
        rss_mb, fds, threads, cpu = measured
        item = Sample(
            seconds=round(time.monotonic() - self.started, 1),
            incarnation=self.incarnation,
            pid=process.pid,
            rss_mb=round(rss_mb, 1),
            fds=fds,
            threads=threads,
            cpu_seconds=round(cpu, 2),
            done=self.tally.counts["done"],
        )
        with self.tally.lock:
            self.samples.append(item)
        return item

    def sampler(self) -> None:
        """Samples every --interval seconds and prints one line each."""
        last: Sample | None = None
        while not self.stopping.wait(self.args.interval):
            # While the agent restarts, the process may be the next one starting up: its
            # first sample is taken once it serves.
            if not self.serving.is_set():
                continue
            item = self.sample()
            if item is None:
                continue
            busy = ""
            if last is not None and last.pid == item.pid and item.seconds > last.seconds:
                share = (item.cpu_seconds - last.cpu_seconds) / (item.seconds - last.seconds)
                busy = f"  cpu {100 * share:3.0f}%"
            print(
                f"  {item.seconds:6.0f} s  #{item.incarnation}  done {item.done:6d}  "
                f"rss {item.rss_mb:6.1f} MB  fds {item.fds:4d}  threads {item.threads:3d}{busy}"
                f"  load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            last = item

    # The work.

    def trigger(self, job: str, args: Sequence[str] = ()) -> Execution:
        """Triggers `job` once, whatever restarts come (one request id for every try)."""
        request_id = uuid.uuid4().hex
        execution = self.call(lambda c: c.client.trigger(job, request_id=request_id, args=args))
        with self.tally.lock:
            self.executions.append(execution.id)
        return execution

    def wait(self, execution_id: str) -> Execution:
        """The execution once terminal, followed on WatchExecution (again after a restart)."""
        return self.call(lambda c: c.client.wait(execution_id))

    def expect(self, final: Execution, status: str, attempt: int, kind: str) -> None:
        """Counts the outcome; records it as a problem unless it is `status` on `attempt`."""
        self.tally.add(f"{kind}_{final.status}")
        self.tally.add("attempts", final.attempt)
        if final.status != status or final.attempt != attempt:
            self.tally.problem(
                f"{kind} {final.id}: {final.status} on attempt {final.attempt} "
                f"({final.failure_reason}: {final.message}), expected {status} on {attempt}"
            )

    def task(self, number: int, kind: str) -> None:
        """Runs one task of `kind`."""
        if kind == "echo":
            token = f"soak-{number}"
            final = self.wait(self.trigger("soak-echo", [token]).id)
            self.expect(final, "completed", 1, kind)
            lines = self.call(lambda c: {(x.stream, x.message) for x in c.client.logs(final.id)})
            if {("stdout", f"out {token}"), ("stderr", f"err {token}")} - lines:
                self.tally.problem(f"echo {final.id}: its log holds {sorted(lines)}")
        elif kind == "true":
            self.expect(self.wait(self.trigger("soak-true").id), "completed", 1, kind)
        elif kind == "cancel":
            execution = self.trigger("soak-sleep")
            if number % 2 == 0:
                self.call(lambda c: self.follow_until(c, execution.id, "started"))
            grace = timedelta(seconds=2)
            self.call(lambda c: c.client.cancel(execution.id, grace=grace))
            self.expect(self.wait(execution.id), "cancelled", 1, kind)
        elif kind == "fail":
            self.expect(self.wait(self.trigger("soak-fail").id), "failed", 3, kind)
        elif kind == "flaky":
            final = self.wait(self.trigger("soak-flaky", [f"soak-{number}"]).id)
            self.expect(final, "completed", 2, kind)
        elif kind == "pull":
            self.expect(self.wait(self.trigger("soak-pull").id), "completed", 1, kind)
        self.tally.add("done")

    def span(self, index: int, running: threading.Event) -> None:
        """An execution that runs across a restart: `running` is set once it runs."""
        try:
            token = f"span-{self.incarnation}-{index}"
            execution = self.trigger("soak-span", [token])
            self.call(lambda c: self.until_running(c, execution.id))
            running.set()
            final = self.wait(execution.id)
            self.expect(final, "completed", 1, "span")
            lines = self.call(lambda c: [line.message for line in c.client.logs(final.id)])
            if lines != [f"before {token}", "after"]:
                self.tally.problem(f"span {final.id}: its log holds {lines}")
        except Exception as error:
            self.tally.problem(f"span {index}: {error!r}")
        finally:
            running.set()

    @staticmethod
    def until_running(connection: Connection, execution_id: str) -> None:
        """Returns once the execution is past Pending and Initializing."""
        for event in connection.client.watch(execution_id):
            if event.execution.status not in ("pending", "initializing"):
                return

    def follow_until(self, connection: Connection, execution_id: str, text: str) -> bool:
        """Follows the execution's log until a line is `text`, then drops the stream;
        False if the execution ended first."""
        request = service_pb.StreamLogBatchesRequest(execution_id=execution_id, follow=True)
        stream: Any = connection.stub.StreamLogBatches(request, timeout=60)
        try:
            for batch in stream:
                if text in batch.messages:
                    self.tally.add("log_follows_dropped")
                    return True
        finally:
            stream.cancel()
        return False

    def worker(self, tasks: queue.Queue[tuple[int, str] | None]) -> None:
        """Runs tasks until told to stop; a task that fails is a problem, not the end."""
        while (item := tasks.get()) is not None:
            number, kind = item
            try:
                self.task(number, kind)
            except Exception as error:
                self.tally.problem(f"{kind} task {number}: {error!r}")
                self.tally.add("done")
                if self.tally.counts["unexpected"] <= 3:
                    traceback.print_exc()

    def watcher(self, seed: int) -> None:
        """Opens WatchEvents streams and drops them: after a few events or at a deadline."""
        rng = random.Random(seed)
        while not self.stopping.is_set():
            if not self.serving.wait(1):
                continue
            connection = self.connection
            try:
                since = max(0, connection.client.node_info().last_sequence - rng.randrange(50))
                request = service_pb.WatchEventsRequest(since_sequence=since)
                stream: Any = connection.stub.WatchEvents(request, timeout=rng.uniform(0.5, 8))
                keep = rng.randrange(1, 400)
                received = 0
                for _ in stream:
                    received += 1
                    if received >= keep or self.stopping.is_set():
                        stream.cancel()
                        break
                self.tally.add("watch_events_received", received)
                self.tally.add("watches_dropped")
            except grpc.RpcError as error:
                code = error.code()
                self.tally.add(f"watches_ended_{code.name.lower()}")
            except ClientError as error:
                self.tally.add(f"watches_ended_{error.code.name.lower()}")
            self.stopping.wait(rng.uniform(0, 1))

    def run(self) -> float:
        """Triggers every job at an even pace, restarting the agent twice; returns the
        seconds from the first trigger to the last task's end."""
        tasks: queue.Queue[tuple[int, str] | None] = queue.Queue(maxsize=self.args.workers)
        threads = [
            threading.Thread(target=self.worker, args=(tasks,), daemon=True)
            for _ in range(self.args.workers)
        ]
        self._watchers = [
            threading.Thread(target=self.watcher, args=(seed,), daemon=True)
            for seed in range(self.args.watchers)
        ]
        sampler = threading.Thread(target=self.sampler, daemon=True)
        for thread in [*threads, *self._watchers, sampler]:
            thread.start()
        kinds = [kind for kind, share in MIX for _ in range(share)]
        rng = random.Random(1)
        # An even pace that ends the triggers a little before --minutes, for the tail.
        rate = self.args.jobs / (self.args.minutes * 60 * 0.95)
        restarts = {self.args.jobs // 3, 2 * self.args.jobs // 3}
        begun = time.monotonic()
        for number in range(self.args.jobs):
            delay = begun + number / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if number in restarts:
                self.restart()
            tasks.put((number, rng.choice(kinds)))
        for _ in range(self.args.workers):
            tasks.put(None)
        for thread in threads:
            thread.join()
        return time.monotonic() - begun

    def settle(self) -> list[str]:
        """Stops the cron job, the watchers and the sampler, and waits until no execution
        is active; returns those still active after a minute (stuck)."""
        self.call(lambda c: c.client.suspend(CRON_JOB))
        deadline = time.monotonic() + 60
        while True:
            active = self.call(lambda c: c.client.list_executions(statuses=ACTIVE))
            if not active or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        self.stopping.set()
        for thread in [*self._watchers, *self._spans]:
            thread.join(RETRY_SECONDS)
        return [f"{execution.id} ({execution.job_name}) {execution.status}" for execution in active]


def cgroup_hierarchies() -> Iterator[Path]:
    """The cgroup root and each hierarchy mounted beneath it (v1 controllers, unified)."""
    root = Path("/sys/fs/cgroup")
    yield root
    yield from (entry for entry in root.iterdir() if entry.is_dir() and not entry.is_symlink())


def leftovers(agent: AgentProcess, cgroup_parent: str, agent_pid: int = 0) -> dict[str, list[str]]:
    """What is left of containers under the agent's data and volatile directories: every
    list is empty on a clean node."""
    data = (agent.cwd / agent.data_dir).resolve()
    paths = agent.paths
    places = (str(data), str(paths.volatile))
    found: dict[str, list[str]] = {}
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4]
        if target.startswith(tuple(f"{place}/" for place in places)):
            mounts.append(target)
    found["mounts"] = mounts
    found["cgroups"] = [
        str(child)
        for hierarchy in cgroup_hierarchies()
        if (hierarchy / cgroup_parent).is_dir()
        for child in (hierarchy / cgroup_parent).iterdir()
        if child.is_dir()
    ]
    processes = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (agent_pid, os.getpid()):
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if any(place.encode() in cmdline for place in places):
                command = cmdline.replace(b"\0", b" ").decode(errors="replace")
                processes.append(f"{entry.name}: {command[:120]}")
    found["processes"] = processes
    for name, directory in (
        ("runtime_state", paths.runtime_state),
        ("bundles", paths.bundles),
        ("exit_records", paths.exits),
        ("attach_sockets", paths.sockets),
        ("writable_layers", paths.writable),
        ("pulls_in_flight", paths.images / "staging"),
    ):
        found[name] = (
            sorted(str(entry) for entry in directory.iterdir()) if directory.is_dir() else []
        )
    return found


def orphan_logs(agent: AgentProcess) -> list[str]:
    """Log directories of executions the store no longer has (the agent stopped)."""
    data = agent.cwd / agent.data_dir
    with contextlib.closing(sqlite3.connect(f"file:{data / 'agent.db'}?mode=ro", uri=True)) as db:
        known = {row[0] for row in db.execute("SELECT id FROM executions")}
    logs = data / "logs"
    return sorted(entry.name for entry in logs.iterdir() if entry.name not in known)


def explain(agent: AgentProcess, found: dict[str, list[str]]) -> None:
    """Prints, for the first leftovers named after a container, its execution as stored."""
    data = agent.cwd / agent.data_dir
    names = {Path(item).name.removesuffix(".d") for value in found.values() for item in value}
    containers = sorted(name for name in names if name.startswith("ja-"))[:5]
    if not containers:
        return
    with contextlib.closing(sqlite3.connect(f"file:{data / 'agent.db'}?mode=ro", uri=True)) as db:
        for container in containers:
            execution_id = container.removeprefix("ja-").split("-")[0]
            row = db.execute(
                "SELECT job_name, status, attempt, container_id FROM executions WHERE id = ?",
                (execution_id,),
            ).fetchone()
            print(f"    {container}: execution {execution_id} {row}")


def summary(samples: Sequence[Sample], warmup: float) -> list[dict[str, object]]:
    """Per incarnation: start and end of each figure and its slope per minute (least
    squares over the samples after `warmup` seconds of the incarnation), and the slope
    over its second half alone (`late`): a leak keeps its slope, a cache filling up
    flattens."""
    result: list[dict[str, object]] = []
    for incarnation in sorted({item.incarnation for item in samples}):
        own = [item for item in samples if item.incarnation == incarnation]
        own = [item for item in own if item.pid == own[0].pid]
        settled = [item for item in own if item.seconds - own[0].seconds >= warmup]
        fitted = settled if len(settled) >= 3 else own
        record: dict[str, object] = {
            "incarnation": incarnation,
            "pid": own[0].pid,
            "from_s": own[0].seconds,
            "to_s": own[-1].seconds,
            "jobs": own[-1].done - own[0].done,
            "samples": len(own),
        }
        for name in ("rss_mb", "fds", "threads"):
            values = [float(getattr(item, name)) for item in own]
            record[name] = [values[0], values[-1]]
            points = [(item.seconds, float(getattr(item, name))) for item in fitted]
            record[f"{name}_slope_per_min"] = round(slope_per_minute(points), 3)
            late = points[len(points) // 2 :]
            record[f"{name}_late_slope_per_min"] = round(slope_per_minute(late), 3)
        busy = own[-1].cpu_seconds - own[0].cpu_seconds
        record["cpu_ms_per_job"] = round(1000 * busy / max(own[-1].done - own[0].done, 1), 2)
        result.append(record)
    return result


def print_summary(incarnations: Sequence[dict[str, object]]) -> None:
    """One line per incarnation."""
    for record in incarnations:
        parts = []
        for name, unit in (("rss_mb", " MB"), ("fds", ""), ("threads", "")):
            start, end = cast("list[float]", record[name])
            slope = record[f"{name}_slope_per_min"]
            late = record[f"{name}_late_slope_per_min"]
            parts.append(
                f"{name.removesuffix('_mb')} {start:g} -> {end:g}{unit} "
                f"({slope:+.2f}/min, late {late:+.2f})"
            )
        print(
            f"  #{record['incarnation']} {record['from_s']:.0f}-{record['to_s']:.0f} s, "
            f"{record['jobs']} jobs: " + ", ".join(parts)
        )


def main() -> int:
    """Runs the soak; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=16, help="tasks in flight at once")
    parser.add_argument(
        "--watchers", type=int, default=3, help="WatchEvents streams coming and going"
    )
    parser.add_argument("--max-concurrent", type=int, default=16, help="the agent's")
    parser.add_argument("--interval", type=float, default=5, help="seconds between samples")
    parser.add_argument(
        "--warmup", type=float, default=30, help="seconds of each incarnation left out of its slope"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the data and volatile directories to look at"
    )
    args = parser.parse_args()
    if absent := tools.missing(*REQUIRED_BINARIES):
        raise SystemExit(f"soak: cannot run, missing: {absent}")
    # A cgroup parent of its own, so that other agents' containers on this host do not count.
    cgroup_parent = f"jobagent-soak-{os.getpid()}"
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="soak-", dir=scratch_parent()))
    try:
        layout = build_example_image(root / "image")
        (root / "registry").mkdir()
        registry = Registry(root / "registry")
        registry.start()
        agent = AgentProcess(
            root / "agent",
            args.runtime,
            registry.host,
            extra_args=(
                "--max-concurrent",
                str(args.max_concurrent),
                "--cgroup-parent",
                cgroup_parent,
                "--retention-interval",
                "10s",
            ),
        )
        try:
            registry.push(layout, "busybox:latest")
            agent.data_dir.mkdir()
            agent.import_image(f"docker://{registry.host}/busybox:latest", "busybox:latest")
            agent.start()
            soak = Soak(agent, cgroup_parent, args)
            soak.connection.client.register(deployment(registry.host), replace=True)
            print(
                f"soak: {args.jobs} jobs over {args.minutes:g} min, {args.workers} workers, "
                f"{args.runtime}, --max-concurrent {args.max_concurrent}, "
                f"load {load_before[0]:.1f}",
                flush=True,
            )
            seconds = soak.run()
            stuck = soak.settle()
            time.sleep(2)
            final = soak.sample()
            idle = leftovers(agent, cgroup_parent, final.pid if final else 0)
            soak.close()
            agent.stop(signal.SIGTERM)
            stopped = leftovers(agent, cgroup_parent)
            stopped["orphan_logs"] = orphan_logs(agent)
            explain(agent, stopped)
        finally:
            agent.stop()
            registry.stop()
            if not args.keep:
                sweep(agent)
            for hierarchy in cgroup_hierarchies():
                with contextlib.suppress(OSError):
                    (hierarchy / cgroup_parent).rmdir()
    finally:
        if args.keep:
            print(f"soak: kept {root} and {agent.paths.volatile}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return report(args, soak, seconds, stuck, idle, stopped, load_before)


def report(
    args: argparse.Namespace,
    soak: Soak,
    seconds: float,
    stuck: list[str],
    idle: dict[str, list[str]],
    stopped: dict[str, list[str]],
    load_before: tuple[float, float, float],
) -> int:
    """Prints the figures and the JSON line, keeps the samples; returns the exit status."""
    counts = soak.tally.counts
    incarnations = summary(soak.samples, args.warmup)
    done = counts["done"]
    print(
        f"soak: {done} jobs in {seconds:.0f} s ({done / seconds:.1f} jobs/s), "
        f"{counts['attempts']} attempts, load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print("  outcomes: " + ", ".join(f"{key} {value}" for key, value in sorted(counts.items())))
    print_summary(incarnations)
    for name, found in (("once idle", idle), ("after stop", stopped)):
        print(
            f"  leftovers {name}: "
            + ", ".join(f"{key} {len(value)}" for key, value in found.items())
        )
        for key, value in found.items():
            for item in value[:5]:
                print(f"    {key}: {item}")
    if stuck:
        print(f"  stuck non-terminal: {len(stuck)}: {stuck[:5]}")
    for problem in soak.tally.problems:
        print(f"  unexpected: {problem}")
    left = sum(len(value) for found in (idle, stopped) for value in found.values())
    record = {
        "bench": "soak",
        "runtime": args.runtime,
        "minutes": round(seconds / 60, 1),
        "jobs": done,
        "jobs_per_s": round(done / seconds, 2),
        "attempts": counts["attempts"],
        "unexpected": counts["unexpected"],
        "stuck": len(stuck),
        "leftovers": left,
        "load": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
        "incarnations": incarnations,
    }
    print(json.dumps(record))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(
        json.dumps(
            {
                "record": record,
                "counts": dict(counts),
                "leftovers": {"idle": idle, "stopped": stopped},
                "machine": machine(),
                "samples": [asdict(item) for item in soak.samples],
            },
            indent=1,
        )
    )
    return 1 if left or stuck or counts["unexpected"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
