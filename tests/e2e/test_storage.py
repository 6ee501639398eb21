"""Storage and network: named volumes, tmpfs, allowlisted binds, private rootfs, host network."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from jobagent_client import ClientError, JobAgentClient

from agent.runtime.volatile import VOLATILE_ROOT
from tests.e2e.conftest import start_agent
from tests.e2e.harness import AgentProcess, Registry, sweep


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("allowed")
    # A job's root is no host user that owns it: it reaches what others may.
    directory.chmod(0o755)
    (directory / "input.txt").write_text("from the host\n")
    return directory


@pytest.fixture(scope="module")
def permissive(
    tmp_path_factory: pytest.TempPathFactory,
    registry: Registry,
    agent: AgentProcess,
    shared_dir: Path,
) -> Iterator[JobAgentClient]:
    """An agent that allows binds under one directory and host networking."""
    args = ("--bind-allow", str(shared_dir), "--allow-host-network")
    own = start_agent(
        tmp_path_factory.mktemp("permissive"), agent.runtime, registry, extra_args=args
    )
    with own.client() as client:
        yield client
    own.stop()
    sweep(own)


def run(client: JobAgentClient, name: str, extra: str, script: str) -> list[str]:
    client.register(
        f"version: v1\ndeployment: storage\nservices:\n  {name}:\n    rtype: job\n"
        f"    image: {{name: busybox:latest}}\n{extra}"
        f"    command: {{entrypoint: [/bin/sh, -c, {script!r}]}}\n",
        replace=True,
    )
    execution = client.wait(client.trigger(name).id)
    assert execution.status == "completed", (execution.message, execution.exit_code)
    return [line.message for line in client.logs(execution.id)]


def test_a_named_volume_outlives_the_execution(permissive: JobAgentClient) -> None:
    volume = "    storage:\n      - {type: named, name: counter, target: /data}\n"
    script = "n=$(cat /data/n 2>/dev/null || echo 0); echo $((n+1)) > /data/n; cat /data/n"
    assert run(permissive, "count", volume, script) == ["1"]
    assert run(permissive, "count", volume, script) == ["2"]


def test_runs_never_share_writes_to_the_image(permissive: JobAgentClient) -> None:
    script = "test ! -e /marker && touch /marker && echo clean"
    assert run(permissive, "private", "", script) == ["clean"]
    assert run(permissive, "private", "", script) == ["clean"]


def test_tmpfs_and_anonymous_storage(permissive: JobAgentClient) -> None:
    storage = (
        "    storage:\n"
        "      - {type: tmpfs, target: /scratch, size: 8Mi}\n"
        "      - {type: anonymous, target: /cache}\n"
    )
    script = "grep ' /scratch ' /proc/mounts | cut -d' ' -f3; echo x > /cache/x; cat /cache/x"
    assert run(permissive, "scratch", storage, script) == ["tmpfs", "x"]


def test_an_allowlisted_bind_mount_reads_and_a_readonly_one_refuses_writes(
    permissive: JobAgentClient, shared_dir: Path
) -> None:
    storage = (
        f"    storage:\n      - {{type: bind, source: {shared_dir}, target: /in, readonly: true}}\n"
    )
    lines = run(permissive, "reader", storage, "cat /in/input.txt; touch /in/x || echo refused")
    # stdout and stderr are separate pipes: only the order within each is kept.
    assert lines[0] == "from the host" and "refused" in lines
    assert not (shared_dir / "x").exists()


def test_a_bind_mount_outside_the_allowlist_is_refused(client: JobAgentClient) -> None:
    document = (
        "version: v1\ndeployment: storage\nservices:\n  sneaky:\n    rtype: job\n"
        "    image: {name: busybox:latest}\n"
        "    storage:\n      - {type: bind, source: /etc, target: /host-etc}\n"
    )
    with pytest.raises(ClientError) as caught:
        client.register(document)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "services.sneaky.storage[0].source"


def test_networking_is_loopback_only_unless_the_host_network_is_allowed(
    client: JobAgentClient, permissive: JobAgentClient
) -> None:
    interfaces = "awk 'NR>2{print $1}' /proc/net/dev"
    assert run(client, "isolated", "", interfaces) == ["lo:"]
    assert len(run(permissive, "hostnet", "    host_network: true\n", interfaces)) > 1
    with pytest.raises(ClientError) as caught:
        run(client, "hostnet", "    host_network: true\n", interfaces)
    assert caught.value.field == "services.hostnet.host_network"


def test_a_named_volume_keeps_its_files_when_it_shares_the_bundles_filesystem(
    registry: Registry, agent: AgentProcess
) -> None:
    # A data directory on the volatile tmpfs (as on a host whose data lives under /run):
    # the volume's bind into the bundle is a mount on the bundle's own filesystem, which
    # comparing devices does not see. The bundle's removal must still take it off first,
    # or removing the bundle removes the volume's files.
    data_dir = Path(tempfile.mkdtemp(prefix="same-filesystem-", dir=VOLATILE_ROOT))
    own = start_agent(data_dir, agent.runtime, registry)
    try:
        with own.client() as client:
            volume = "    storage:\n      - {type: named, name: kept, target: /data}\n"
            script = "n=$(cat /data/n 2>/dev/null || echo 0); echo $((n+1)) > /data/n; cat /data/n"
            assert run(client, "count", volume, script) == ["1"]
            assert run(client, "count", volume, script) == ["2"]
        assert (data_dir / "volumes" / "kept" / "n").read_text() == "2\n"
    finally:
        own.stop()
        sweep(own)
        shutil.rmtree(data_dir, ignore_errors=True)
