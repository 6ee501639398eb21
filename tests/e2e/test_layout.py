"""Where a container's parts live: bundle and runtime state in the agent's volatile
directory on a tmpfs, what the container writes on the data directory's disk."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from jobagent_client import JobAgentClient

from agent.runtime import syscalls
from tests.e2e.conftest import start_agent
from tests.e2e.harness import AgentProcess, Registry, settled_leftovers, sweep, wait_until

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
