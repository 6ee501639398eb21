"""Where a container's parts live: bundle and runtime state in the agent's volatile
directory on a tmpfs, what the container writes on the data directory's disk."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from jobagent_client import JobAgentClient

from agent.runtime import syscalls
from tests.e2e.conftest import start_agent
from tests.e2e.harness import (
    AgentProcess,
    Registry,
    settled_leftovers,
    sweep,
    wait_until,
)
from tests.kernel import dirty_pages, kernel_release

DOCUMENT = """\
version: v1
deployment: layout
services:
  writer:
    rtype: job
    image: {name: busybox:latest}
    storage:
      - {type: anonymous, target: /scratch}
    command:
      entrypoint: [/bin/sh, -c, 'echo root > /written; echo volume > /scratch/kept; sleep 30']
"""


def test_bundles_and_runtime_state_are_in_memory_and_writes_on_the_data_disk(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    client.register(DOCUMENT, replace=True)
    execution = client.trigger("writer")
    wait_until(lambda: client.get_execution(execution.id).status == "running", 30, "running")
    paths = agent.paths
    cid = client.get_execution(execution.id).container_id
    try:
        writable = paths.writable / cid
        wait_until(lambda: (writable / "upper" / "written").exists(), 10, "the write")
        bundle = paths.bundles / cid
        config = json.loads((bundle / "config.json").read_text())
        assert config["root"]["path"] == str(bundle / "rootfs")
        assert (paths.runtime_state / cid / "state.json").exists()
        for volatile in (bundle, paths.runtime_state / cid, paths.exits):
            assert syscalls.filesystem_magic(volatile) == syscalls.TMPFS_MAGIC, volatile

        # The mount table names the layers by the bundle's links, relative to the bundle.
        [line] = [
            line
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4] == str(bundle / "rootfs")
        ]
        options = line.split(" - ")[1].split()[2]
        assert options.startswith("rw,lowerdir=lower,upperdir=upper,workdir=work"), options
        # No sync waits for the upper layer: it goes with the container (Linux 5.10 has
        # the option; 6.15 and later show it as fsync=volatile).
        if kernel_release() >= (5, 10):
            assert {"volatile", "fsync=volatile"} & set(options.split(",")), options
        assert (bundle / "upper").resolve() == (writable / "upper").resolve()
        # The lower layer is the image seen through an idmapped mount in the bundle.
        assert (bundle / "lower").resolve() == bundle / "image-idmapped"
        assert (bundle / "image").resolve().is_relative_to(paths.images.resolve())
        assert os.stat(bundle / "image-idmapped" / "bin").st_uid >= 1 << 20
        assert (writable / "upper" / "written").read_text() == "root\n"
        assert (writable / "anonymous" / "0" / "kept").read_text() == "volume\n"
        data_disk = os.stat(agent.cwd / agent.data_dir).st_dev
        assert os.stat(writable / "upper").st_dev == data_disk
    finally:
        client.cancel(execution.id)
    assert client.wait(execution.id).status == "cancelled"
    assert settled_leftovers(agent, cid) == []


ROOT = """\
version: v1
deployment: root
services:
  look:
    rtype: job
    image: {name: busybox:latest}
    user: '1000:1000'
    command: {entrypoint: [/bin/sh, -c, 'stat -c %a /; ls -d /bin']}
"""


def test_the_root_directory_is_the_images_whatever_the_agents_umask(
    tmp_path: Path, registry: Registry, agent: AgentProcess
) -> None:
    own = start_agent(tmp_path / "agent", agent.runtime, registry, umask=0o077)
    try:
        with own.client() as client:
            client.register(ROOT, replace=True)
            final = client.wait(client.trigger("look").id)
            assert final.status == "completed", final.message
            (image_root,) = (own.paths.images / "rootfs").glob("sha256-*/rootfs")
            mode = f"{stat.S_IMODE(os.stat(image_root).st_mode):o}"
            assert [line.message for line in client.logs(final.id)] == [mode, "/bin"]
            assert mode == "755"  # where a new directory under this umask is 700
    finally:
        own.stop()
        sweep(own)


NEIGHBOURS = """\
version: v1
deployment: neighbours
services:
  writer:
    rtype: job
    image: {name: busybox:latest}
    command:
      entrypoint: [/bin/sh, -c, 'dd if=/dev/zero of=/unsynced bs=1M count=32 && sleep 60']
  quick:
    rtype: job
    image: {name: busybox:latest}
    command: {entrypoint: [/bin/true]}
"""


def test_a_containers_end_leaves_its_neighbours_writes_alone_and_the_store_is_synced(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    """Another container's removal leaves the data disk's writeback alone: unmounting a
    non-volatile overlay would sync the whole filesystem, and so wait for every job's
    unwritten data (seconds, for gigabytes). The agent's own records reach the disk within
    about a second all the same: it syncs its store's log, and nothing else."""
    data_dir = agent.cwd / agent.data_dir
    if syscalls.filesystem_magic(data_dir) == syscalls.TMPFS_MAGIC:
        pytest.skip("the data directory is on a tmpfs, whose pages are never dirty")
    dirty_pages(data_dir / "agent.log")  # skips here, before a job starts, without cachestat
    client.register(NEIGHBOURS, replace=True)
    writer = client.trigger("writer")
    wait_until(lambda: client.get_execution(writer.id).status == "running", 30, "running")
    cid = client.get_execution(writer.id).container_id
    try:
        written = agent.paths.writable / cid / "upper" / "unsynced"
        wait_until(lambda: written.exists() and written.stat().st_size == 32 << 20, 10, "the write")
        # Well under the kernel's own writeback thresholds (30 s, a tenth of memory).
        assert dirty_pages(written) > 0
        quick = client.wait(client.trigger("quick").id)
        assert quick.status == "completed", quick.message
        assert settled_leftovers(agent, quick.container_id) == []
        assert dirty_pages(written) > 0
        store_log = data_dir / "agent.db-wal"
        wait_until(lambda: dirty_pages(store_log) == 0, 5, "the store's log synced")
        assert dirty_pages(written) > 0
    finally:
        client.cancel(writer.id)
    assert client.wait(writer.id).status == "cancelled"
    assert settled_leftovers(agent, cid) == []
