"""Bounds against the real agent, each with a small configured limit: open streams per
caller and per node, pending executions per job and per node (and a cron run past them),
the request size. A caller at a bound gets RESOURCE_EXHAUSTED naming it, and the node
keeps serving the others."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc
from jobagent_client import ClientError, Execution, JobAgentClient, JobEvent

from tests.e2e.conftest import start_agent_with_tokens
from tests.e2e.harness import AgentProcess, Registry, sweep, wait_until

TOKENS = {
    "greedy": "greedy-token-0123456789",
    "other": "other-token-0123456789",
    "admin": "admin-token-0123456789",
}
LIMITS = (
    *("--max-streams-per-caller", "2", "--max-streams", "4"),
    *("--max-pending-per-job", "2", "--max-pending", "3", "--max-concurrent", "1"),
    *("--max-request-size", "64Ki"),
)
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def job(name: str, script: str = "sleep 60") -> str:
    return (
        f"version: v1\ndeployment: bounds\nservices:\n  {name}:\n    rtype: job\n"
        f"    image: {{name: busybox:latest}}\n"
        f"    command: {{entrypoint: [/bin/sh, -c, {script!r}]}}\n"
        "    stop_grace_period: 0s\n"
    )


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[AgentProcess]:
    """An agent with small bounds and three callers (tokens)."""
    roles = {
        name: ("admin" if name == "admin" else "operator", token) for name, token in TOKENS.items()
    }
    agent = start_agent_with_tokens(tmp_path_factory.mktemp("bounds"), registry, roles, LIMITS)
    yield agent
    agent.stop()
    sweep(agent)


class Caller:
    """A raw stub of one caller, for streams held open without reading them."""

    def __init__(self, agent: AgentProcess, name: str) -> None:
        self.channel = grpc.insecure_channel(agent.target)
        self.stub = service_grpc.JobServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {TOKENS[name]}"),)

    def watch(self, since: int = 0) -> Any:
        """A WatchEvents stream (a grpc call), once the agent has taken it (its headers
        came); raises grpc.RpcError when refused."""
        call: Any = self.stub.WatchEvents(
            service_pb.WatchEventsRequest(since_sequence=since), metadata=self.metadata
        )
        call.initial_metadata()
        if call.done() and call.code() is not grpc.StatusCode.OK:
            raise call
        return call

    def refused(self, since: int = 0) -> ClientError:
        """The error a WatchEvents stream ends with at once."""
        call = self.stub.WatchEvents(
            service_pb.WatchEventsRequest(since_sequence=since), metadata=self.metadata
        )
        with pytest.raises(grpc.RpcError) as raised:
            next(iter(call))
        return ClientError.from_rpc_error(raised.value)

    def serves(self) -> bool:
        """True when a unary call answers."""
        request = service_pb.GetNodeInfoRequest()
        return bool(self.stub.GetNodeInfo(request, metadata=self.metadata, timeout=10))

    def close(self) -> None:
        self.channel.close()


def test_streams_are_bounded_per_caller_and_per_node_and_given_back(
    bounded: AgentProcess,
) -> None:
    greedy, other = Caller(bounded, "greedy"), Caller(bounded, "other")
    try:
        held = [greedy.watch(), greedy.watch()]
        refusal = greedy.refused()
        assert refusal.code == EXHAUSTED and "--max-streams-per-caller" in refusal.message
        # Another caller is not held up by the greedy one.
        assert other.serves()
        others = [other.watch(), other.watch()]
        assert greedy.serves()
        # Four open on the node: its limit, whoever asks.
        admin = Caller(bounded, "admin")
        refusal = admin.refused()
        assert refusal.code == EXHAUSTED and "--max-streams)" in refusal.message
        assert admin.serves()
        # A client that cancels gives its slot back.
        held.pop().cancel()
        wait_until(lambda: _opens(greedy), 30, "the cancelled stream's slot to come back")
        for call in others:
            call.cancel()
        # A stream that ends in an error gives its slot back too (a since_sequence beyond
        # the newest event is OUT_OF_RANGE), again and again.
        for _ in range(4):
            error = other.refused(since=10**9)
            assert error.code == grpc.StatusCode.OUT_OF_RANGE
        wait_until(lambda: _opens(other) and _opens(other), 30, "other's two slots")
        admin.close()
    finally:
        greedy.close()
        other.close()


def _opens(caller: Caller) -> bool:
    """Opens a stream if a slot is free (and leaves it open)."""
    try:
        caller.watch()
    except grpc.RpcError as error:
        assert ClientError.from_rpc_error(error).code == EXHAUSTED
        return False
    return True


def test_pending_executions_are_bounded_per_job_and_per_node(bounded: AgentProcess) -> None:
    with bounded.client(TOKENS["admin"]) as admin:
        for name in ("holder", "queued", "second"):
            admin.register(job(name), replace=True)
        started = [admin.trigger("holder")]  # takes the only slot
        wait_until(lambda: admin.get_execution(started[0].id).status == "running", 30, "running")
        started += [admin.trigger("queued"), admin.trigger("queued")]
        with pytest.raises(ClientError) as refused:
            admin.trigger("queued")
        assert refused.value.code == EXHAUSTED and "--max-pending-per-job" in refused.value.message
        started.append(admin.trigger("second"))
        with pytest.raises(ClientError) as refused:
            admin.trigger("second")
        assert refused.value.code == EXHAUSTED and "--max-pending)" in refused.value.message
        # A cron run past the bound is skipped, with an event that says why.
        cron = job("every-second").replace("rtype: job", 'rtype: cron\n    schedule: "* * * * * *"')
        admin.register(cron, replace=True)
        try:
            wait_until(lambda: admin.get_job("every-second").skipped >= 1, 30, "a skipped run")
            skip = _first_skip(admin, "every-second")
            assert "was skipped" in skip.message and "--max-pending" in skip.message
            assert not admin.list_executions("every-second")
        finally:
            admin.unregister("every-second")
        # Other calls are served all the while; room again once one is cancelled.
        assert admin.node_info().queued_executions == 3
        admin.cancel(started[1].id)
        started.append(admin.trigger("queued"))
        for execution in reversed(started):  # the queued ones first: none starts meanwhile
            if admin.get_execution(execution.id).status not in ("cancelled", "failed"):
                admin.cancel(execution.id)


def _first_skip(client: JobAgentClient, job_name: str) -> JobEvent:
    """The job's first SCHEDULE_SKIPPED event."""
    for item in client.watch_events(job_name=job_name, types=("schedule_skipped",)):
        if isinstance(item, JobEvent):
            return item
    raise AssertionError("the watch ended")


def test_a_request_past_the_size_bound_is_refused(bounded: AgentProcess) -> None:
    big = job("big", "echo " + "x" * (80 * 1024))
    with bounded.client(TOKENS["admin"]) as admin:
        with pytest.raises(ClientError) as refused:
            admin.register(big)
        assert refused.value.code == EXHAUSTED
        assert "larger than max" in refused.value.message
        assert admin.node_info().agent_version  # the agent serves on
        admin.register(job("small"), replace=True)


def test_a_deployments_document_is_stored_once_not_once_per_service(
    bounded: AgentProcess,
) -> None:
    services = "".join(
        f"  part-{i}:\n    rtype: job\n    image: {{name: busybox:latest}}\n"
        f"    env: {{PAD: {'x' * 1024}}}\n    command: {{entrypoint: [/bin/true]}}\n"
        for i in range(40)
    )
    text = "version: v1\ndeployment: parts\nservices:\n" + services
    with bounded.client(TOKENS["admin"]) as admin:
        admin.register(text, replace=True)
    admin_stub = Caller(bounded, "admin")
    try:
        request = service_pb.GetJobRequest(name="part-7")
        shown = admin_stub.stub.GetJob(request, metadata=admin_stub.metadata).spec_yaml
    finally:
        admin_stub.close()
    assert "part-7:" in shown and "part-8:" not in shown and "deployment: parts" in shown
    database = bounded.cwd / bounded.data_dir / "agent.db"
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        query = "SELECT sum(length(spec_yaml)) FROM jobs WHERE name LIKE 'part-%'"
        (stored,) = db.execute(query).fetchone()
    assert stored < 2 * len(text)


def rss_bytes(pid: int) -> int:
    """The resident memory of a process (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def awk_run(agent: AgentProcess, name: str, program: str, max_log_size: str) -> Execution:
    """A completed run of a job `name` whose process is awk's `program`, its output kept
    up to `max_log_size`."""
    spec = (
        f"version: v1\ndeployment: bounds\nservices:\n  {name}:\n    rtype: job\n"
        f"    image: {{name: busybox:latest}}\n    max_log_size: {max_log_size}\n"
        f"    command: {{entrypoint: [awk, '{program}']}}\n"
    )
    with agent.client(TOKENS["admin"]) as admin:
        admin.register(spec, replace=True)
        done = admin.wait(admin.trigger(name).id)
    assert done.status == "completed", done.message
    return done


def test_a_slow_reader_of_a_large_log_costs_the_agent_little_memory(
    bounded: AgentProcess,
) -> None:
    lines = (64 << 20) // 100  # 64 MiB of output in lines of 100 bytes
    program = f'BEGIN {{ for (i = 0; i < {lines}; i++) print sprintf("%099d", i) }}'
    done = awk_run(bounded, "chatty", program, "64Mi")
    assert bounded.process is not None
    pid = bounded.process.pid
    reader = Caller(bounded, "other")
    try:
        for name, request in (
            ("StreamLogs", service_pb.StreamLogsRequest(execution_id=done.id)),
            ("DownloadLogs", service_pb.DownloadLogsRequest(execution_id=done.id)),
        ):
            before = rss_bytes(pid)
            call: Any = getattr(reader.stub, name)(request, metadata=reader.metadata)
            next(call)  # the stream runs; its reader then stops reading for a while
            time.sleep(3)
            grown = rss_bytes(pid) - before
            assert grown < 32 << 20, f"{name}: the agent grew by {grown >> 20} MiB"
            call.cancel()
    finally:
        reader.close()


def whole_lines(batches: Iterable[service_pb.StreamLogBatchesResponse]) -> list[str]:
    """The lines of StreamLogBatches messages, each line's fragments (partial) joined."""
    lines, fragments = [], ""
    for batch in batches:
        partial = set(batch.partial_lines)
        for index, message in enumerate(batch.messages):
            fragments += message
            if index not in partial:
                lines.append(fragments)
                fragments = ""
    return lines


def records(batches: Iterable[service_pb.StreamLogBatchesResponse]) -> list[tuple[str, bool]]:
    """Each record of StreamLogBatches messages: its text, and whether it is a fragment."""
    return [
        (message, index in batch.partial_lines)
        for batch in batches
        for index, message in enumerate(batch.messages)
    ]


def test_a_tail_of_a_long_log_of_short_lines_is_found_from_its_end(
    bounded: AgentProcess,
) -> None:
    """Tails of a real log of 330,000 short lines: the last five, and one of more lines
    than the log holds, read whole. Callers that stop reading such tails hold up no other
    call. (A tail is found reading the file backwards, and an unread stream holds one read
    of the log: tests/unit/test_logs.py measures both; the agent once parsed every line
    kept on the loop and held them all until the caller read them.)"""
    lines = 330_000
    program = f'BEGIN {{ for (i = 0; i < {lines}; i++) print "l" i }}'
    done = awk_run(bounded, "terse", program, "4Mi")
    reader, other = Caller(bounded, "other"), Caller(bounded, "greedy")
    try:

        def tail(lines: int) -> list[service_pb.StreamLogBatchesResponse]:
            request = service_pb.StreamLogBatchesRequest(execution_id=done.id, tail_lines=lines)
            return list(reader.stub.StreamLogBatches(request, metadata=reader.metadata, timeout=60))

        whole = tail(2**31 - 1)
        assert whole_lines(whole) == [f"l{number}" for number in range(lines)]
        # A tail counts records: conmon may have cut a line in fragments.
        assert records(tail(5)) == records(whole)[-5:]
        every = service_pb.StreamLogBatchesRequest(execution_id=done.id, tail_lines=2**31 - 1)
        calls: list[Any] = []
        for _ in range(2):  # the caller's bound
            calls.append(reader.stub.StreamLogBatches(every, metadata=reader.metadata))
            next(calls[-1])  # the stream runs; its reader then stops reading
        assert other.serves()
        for call in calls:
            call.cancel()
    finally:
        reader.close()
        other.close()
