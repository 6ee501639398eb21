"""A full data disk: the agent keeps serving, every execution ends saying the disk is full,
triggers are refused while space is short, and everything works again once it returns."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from jobagent_client import ClientError, JobAgentClient
from jobagent_client.models import JobEvent

from tests.e2e.conftest import running_agent
from tests.e2e.harness import (
    AgentProcess,
    Registry,
    configured_image,
    set_stop_signal,
    wait_until,
)

MiB = 1024**2
TICKER = (
    "  ticker:\n    rtype: cron\n    schedule: '* * * * * *'\n    concurrency_policy: forbid\n"
    "    image: {name: busybox:latest}\n    command: {entrypoint: [/bin/true]}\n"
)
MIN_FREE = 16 * MiB
FILLERS = {
    # dd stops at ENOSPC; the shell then stays (as pid 1 it ignores SIGTERM: killed later).
    "writable layer": "command: {entrypoint: [/bin/sh, -c, 'dd if=/dev/zero of=/fill bs=1M; "
    "exec sleep 600']}",
    "anonymous volume": "storage: [{type: anonymous, target: /work}]\n"
    "    command: {entrypoint: [/bin/sh, -c, 'dd if=/dev/zero of=/work/fill bs=1M; "
    "exec sleep 600']}",
    # Prints for ever; its log may grow past the disk (16 times max_log_size).
    "log": "max_log_size: 64Mi\n    command: {entrypoint: [/bin/yes, "
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef]}",
}


def jobs(filler: str) -> str:
    """A quick probe job and the filler."""
    return (
        "version: v1\ndeployment: disk\nservices:\n"
        "  probe:\n    rtype: job\n    image: {name: busybox:latest}\n"
        "    command: {entrypoint: [/bin/echo, hi]}\n"
        f"  filler:\n    rtype: job\n    image: {{name: busybox:latest}}\n    {filler}\n"
    )


def free(path: Path) -> int:
    """Bytes free on the filesystem of `path`."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


@pytest.fixture
def small_disk(tmp_path: Path, registry: Registry) -> Iterator[AgentProcess]:
    """An agent whose data directory is a 64 MiB tmpfs, with a 16 MiB reserve."""
    data_dir = tmp_path / "agent"
    data_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(data_dir)], check=True)
    try:
        with running_agent(
            data_dir,
            "youki",
            registry,
            extra_args=("--min-free-space", "16Mi", "--max-concurrent", "1"),
        ) as agent:
            yield agent
    finally:
        # The sweep unmounts it already, unless the agent never started.
        subprocess.run(["umount", "-l", str(data_dir)], check=False, capture_output=True)


def answers(agent: AgentProcess, client: JobAgentClient, execution_id: str) -> None:
    """Health, node info, the job list and an execution all still answer."""
    assert agent.serving()
    assert client.node_info()
    assert {"probe", "filler"} <= {job.name for job in client.list_jobs()}
    assert client.get_execution(execution_id).id == execution_id


@pytest.mark.parametrize("where", list(FILLERS))
def test_a_full_data_disk(small_disk: AgentProcess, where: str) -> None:
    agent = small_disk
    data_dir = agent.cwd / agent.data_dir
    reserve = data_dir / "reserve"
    wait_until(reserve.exists, 10, "the disk reserve")
    with agent.client() as client:
        client.register(jobs(FILLERS[where]))
        filler = client.trigger("filler")
        wait_until(lambda: free(data_dir) < MIN_FREE, 60, "the disk to fill")

        # While space is short: triggers are refused, naming the free space and the reserve.
        with pytest.raises(ClientError) as refused:
            client.trigger("probe")
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.reason == "DISK_FULL"
        assert "disk is full: the data directory's filesystem has " in refused.value.message
        assert "less than the reserve of 16.0 MiB (--min-free-space)" in refused.value.message
        answers(agent, client, filler.id)

        # The writer is stopped; it ends Failed, saying why.
        ended = client.wait(filler.id)
        assert ended.status == "failed"
        assert "disk is full" in ended.message
        answers(agent, client, filler.id)
        active = {"pending", "initializing", "running"}
        assert not [e for e in client.list_executions() if e.status in active]

        # Space returns: what the filler wrote goes with its container, and its log
        # (kept until retention) the test removes.
        if where == "log":
            for log_file in (data_dir / "logs" / filler.id).iterdir():
                log_file.unlink()
        wait_until(lambda: free(data_dir) >= MIN_FREE, 30, "space to return")
        wait_until(reserve.exists, 10, "the disk reserve to be made again")
        probe = client.wait(client.trigger("probe").id)
        assert probe.status == "completed", probe.message


def fill(path: Path) -> None:
    """Writes `path` until the filesystem has no byte left."""
    chunk = MiB
    with path.open("wb", buffering=0) as file:
        while chunk >= 512:
            try:
                file.write(b"\0" * chunk)
            except OSError:
                chunk //= 2


def test_the_agent_records_ends_on_a_disk_someone_else_filled(small_disk: AgentProcess) -> None:
    agent = small_disk
    data_dir = agent.cwd / agent.data_dir
    reserve = data_dir / "reserve"
    wait_until(reserve.exists, 10, "the disk reserve")
    napper = "command: {entrypoint: [/bin/sleep, '2']}"
    with agent.client() as client:
        client.register(jobs(napper) + TICKER)
        running = client.trigger("filler")
        wait_until(lambda: client.get_execution(running.id).status == "running", 30, "running")
        filler = data_dir / "filler"
        fill(filler)
        missed = client.get_job("ticker").missed
        assert free(data_dir) < MiB
        # The end of what ran is recorded (with the reserve, if the store needs it).
        ended = client.wait(running.id)
        assert ended.status == "completed", ended.message
        with pytest.raises(ClientError) as refused:
            client.trigger("probe")
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        answers(agent, client, running.id)
        # A cron run due meanwhile is missed, saying why.
        wait_until(lambda: client.get_job("ticker").missed > missed, 10, "a missed cron run")
        events = client.watch_events(0, job_name="ticker", types=("schedule_missed",))
        for event in events:
            assert isinstance(event, JobEvent)
            if "was missed: disk is full: the data directory's filesystem has" in event.message:
                break

        filler.unlink()
        wait_until(reserve.exists, 10, "the disk reserve to be made again")
        runs = len(client.list_executions("ticker"))
        wait_until(lambda: len(client.list_executions("ticker")) > runs, 10, "the ticker to run")
        # The slot of the napper was freed: with one slot per node, these run in turn.
        for _ in range(2):
            probe = client.wait(client.trigger("probe").id)
            assert probe.status == "completed", probe.message


def test_a_writer_that_gives_up_at_enospc_fails_saying_the_disk_is_full(
    small_disk: AgentProcess,
) -> None:
    agent = small_disk
    data_dir = agent.cwd / agent.data_dir
    gives_up = "command: {entrypoint: [/bin/dd, if=/dev/zero, of=/fill, bs=1M]}"
    with agent.client() as client:
        client.register(jobs(gives_up))
        ended = client.wait(client.trigger("filler").id)
        assert ended.status == "failed"
        # dd's own exit (code 1), or stopped by the agent if it saw the full disk first.
        assert "disk is full: the data directory's filesystem has " in ended.message
        wait_until(lambda: free(data_dir) >= MIN_FREE, 30, "space to return")
        assert client.wait(client.trigger("probe").id).status == "completed"


def unstoppable_filler(image: str) -> str:
    """An innocent job that writes 4 MiB and sleeps, and a filler (of `image`) that fills
    the disk once the file /go appears in its root."""
    return (
        "version: v1\ndeployment: disk\nservices:\n"
        "  innocent:\n    rtype: job\n    image: {name: busybox:latest}\n"
        "    command: {entrypoint: [/bin/sh, -c, 'dd if=/dev/zero of=/data bs=1M count=4; "
        "exec sleep 600']}\n"
        f"  filler:\n    rtype: job\n    image: {{name: '{image}'}}\n"
        "    command: {entrypoint: [/bin/sh, -c, 'until [ -e /go ]; do sleep 0.1; done; "
        "dd if=/dev/zero of=/fill bs=1M; exec sleep 600']}\n"
    )


def status_of(client: JobAgentClient, execution_id: str) -> str:
    return client.get_execution(execution_id).status


@pytest.mark.parametrize("where", ["image", "bundle"])
def test_a_filler_with_a_bogus_stop_signal_is_evicted_and_no_innocent_job(
    tmp_path: Path, registry: Registry, example_image: Path, where: str
) -> None:
    """A disk filler whose stop signal the runtime refuses: its image's StopSignal is
    SIGBOGUS, or its bundle holds it (as an agent that copied it unchecked wrote it). The
    stop raised, the disk watch had marked it evicted and failed, and, restarted, evicted
    the next biggest writer, an innocent job, while the filler ran on. Now the filler is
    stopped (by SIGTERM, or by SIGKILL once the signal is refused) and ends saying the disk
    is full; the innocent job runs on."""
    image = "busybox:latest"
    if where == "image":
        layout = configured_image(example_image, tmp_path / "bogus", "--config.stopsignal=SIGBOGUS")
        image = registry.push(layout, "busybox:bogus-stop")
    data_dir = tmp_path / "agent"
    data_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(data_dir)], check=True)
    try:
        with (
            running_agent(
                data_dir, "youki", registry, extra_args=("--min-free-space", "16Mi")
            ) as agent,
            agent.client() as client,
        ):
            client.register(unstoppable_filler(image))
            innocent = client.trigger("innocent")
            wait_until(lambda: status_of(client, innocent.id) == "running", 60, "innocent")
            wait_until(
                lambda: (
                    agent.paths.writable.joinpath(innocent.container_id).is_dir()
                    and free(data_dir) < 90 * MiB
                ),
                30,
                "the innocent job's 4 MiB",
            )
            filler = client.trigger("filler")
            wait_until(lambda: status_of(client, filler.id) == "running", 60, "the filler")
            container_id = client.get_execution(filler.id).container_id
            if where == "bundle":
                set_stop_signal(agent, container_id, "SIGBOGUS")
            (agent.paths.bundles / container_id / "rootfs" / "go").touch()
            wait_until(lambda: status_of(client, filler.id) != "running", 60, "the eviction")
            ended = client.get_execution(filler.id)
            assert (ended.status, ended.failure_reason) == ("failed", "exit_code")
            assert ended.message.startswith("stopped by the agent: disk is full: ")
            assert "this execution took the most of it" in ended.message
            assert status_of(client, innocent.id) == "running"
            assert "background task disk failed" not in agent.log_file.read_text()
            assert client.cancel(innocent.id, grace=timedelta(seconds=1)).status == "cancelled"
    finally:
        # The sweep unmounts it already, unless the agent never started.
        subprocess.run(["umount", "-l", str(data_dir)], check=False, capture_output=True)
