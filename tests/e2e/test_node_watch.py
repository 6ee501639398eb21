"""WatchEvents at its edges: a bookmark interval far too short, and since 0 after retention."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc
from jobagent_client import ClientError
from jobagent_client.models import JobEvent

from tests.e2e.conftest import RUNTIMES, start_agent
from tests.e2e.harness import AgentProcess, Registry, sweep, wait_until

WATCH_SECONDS = 3.5


def test_a_microsecond_bookmark_interval_cannot_make_more_than_one_bookmark_a_second(
    agent: AgentProcess,
) -> None:
    request = service_pb.WatchEventsRequest(job_name="never-registered-quiet")
    request.bookmark_interval.FromNanoseconds(1_000)
    bookmarks = 0
    with grpc.insecure_channel(agent.target) as channel:
        call = service_grpc.JobServiceStub(channel).WatchEvents(request, timeout=WATCH_SECONDS)
        with pytest.raises(grpc.RpcError) as ended:
            for item in call:
                assert item.HasField("bookmark")
                bookmarks += 1
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 1 <= bookmarks <= WATCH_SECONDS + 1


def test_since_zero_starts_at_the_oldest_event_retention_left(
    tmp_path: Path, registry: Registry
) -> None:
    own = start_agent(
        tmp_path / "agent",
        RUNTIMES[0],
        registry,
        extra_args=("--retention-max-age", "1s", "--retention-interval", "1s"),
    )
    job = (
        "version: v1\ndeployment: aged\nservices:\n  {name}:\n    rtype: job\n"
        "    image: {{name: busybox:latest}}\n    command: {{entrypoint: [/bin/true]}}\n"
    )
    try:
        with own.client() as client:
            client.register(job.format(name="aged-out"))
            assert client.wait(client.trigger("aged-out").id).status == "completed"

            def first_events_gone() -> bool:
                try:
                    next(iter(client.watch_events(1)))
                except ClientError as error:
                    assert error.code == grpc.StatusCode.OUT_OF_RANGE
                    return True
                return False

            wait_until(first_events_gone, 20, "retention to remove the first events")
            client.register(job.format(name="kept"))
            since = time.monotonic()
            first = next(iter(client.watch_events(0, job_name="kept")))
            assert time.monotonic() - since < 5
            assert isinstance(first, JobEvent) and first.type == "job_registered"
    finally:
        own.stop()
        sweep(own)
