"""User namespaces: a job's root is an unprivileged host range, unless the agent allows the
host's namespace; the image's files keep their owners inside; what a job writes to its
volumes is owned by its range on the host."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from jobagent_client import ClientError, JobAgentClient

from agent.domain import CommandSpec, IdRange, IdRangePool, ImageSpec, PullPolicy
from agent.runtime import bundle
from agent.runtime.images import ImageStore
from agent.runtime.manager import ContainerManager, ContainerRequest, RuntimePaths
from tests.e2e.conftest import start_agent
from tests.e2e.harness import AgentProcess, Registry, sweep, wait_until

# The agent's default pool (--userns-range): every job's range lies in it, whichever slot
# it holds among the jobs the shared agent has registered.
POOL = IdRangePool()
RANGE_START = POOL.start
RANGE_SIZE = 65536
LAST_RANGE_ID = POOL.start + POOL.count - 1


def document(name: str, script: str, extra: str = "") -> str:
    """A job running `script` under /bin/sh."""
    return (
        f"version: v1\ndeployment: userns\nservices:\n  {name}:\n    rtype: job\n"
        f"    image: {{name: busybox:latest}}\n{extra}"
        f"    command: {{entrypoint: [/bin/sh, -c, {script!r}]}}\n"
    )


def host_ids(agent: AgentProcess, container_id: str) -> tuple[list[int], list[int]]:
    """The real, effective, saved and filesystem uids and gids of the container's process,
    as the host sees them (its pid from the runtime's state)."""
    state = subprocess.run(
        [agent.runtime, "--root", str(agent.paths.runtime_state), "state", container_id],
        check=True,
        capture_output=True,
        text=True,
    )
    pid = json.loads(state.stdout)["pid"]
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return [int(n) for n in fields["Uid"].split()], [int(n) for n in fields["Gid"].split()]


def stdout(client: JobAgentClient, execution_id: str) -> list[str]:
    """What the execution printed on its standard output so far."""
    return [line.message for line in client.logs(execution_id) if line.stream == "stdout"]


def running(client: JobAgentClient, name: str, lines: int) -> tuple[str, str, list[str]]:
    """Triggers `name`, waits until it runs and printed `lines` lines on its standard
    output; returns the execution's id, its container and those lines."""
    execution = client.trigger(name)
    wait_until(lambda: len(stdout(client, execution.id)) >= lines, 30, f"the lines of {name}")
    found = client.get_execution(execution.id)
    assert found.status == "running", found.message
    return execution.id, found.container_id, stdout(client, execution.id)


def stop(client: JobAgentClient, execution_id: str) -> None:
    client.cancel(execution_id, grace=timedelta(0))
    assert client.wait(execution_id).status == "cancelled"


def in_range(host_id: int) -> bool:
    return RANGE_START <= host_id <= LAST_RANGE_ID


def test_container_root_is_an_unprivileged_host_id_and_the_image_keeps_its_owners(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    script = "id -u; id -g; stat -c %u:%g /bin/busybox; cat /proc/self/uid_map; sleep 30"
    client.register(document("rootless", script), replace=True)
    execution_id, container_id, lines = running(client, "rootless", 4)
    try:
        uids, gids = host_ids(agent, container_id)
    finally:
        stop(client, execution_id)
    assert lines[:3] == ["0", "0", "0:0"]
    inside, start, size = (int(n) for n in lines[3].split())
    assert (inside, size) == (0, RANGE_SIZE) and in_range(start)
    assert (start - RANGE_START) % RANGE_SIZE == 0
    assert uids == [start] * 4 and gids == [start] * 4


def test_a_job_user_runs_as_its_id_in_the_range(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    client.register(
        document("as-user", "id -u; cat /proc/self/uid_map; sleep 30", "    user: '1000:1000'\n"),
        replace=True,
    )
    execution_id, container_id, lines = running(client, "as-user", 2)
    try:
        uids, gids = host_ids(agent, container_id)
    finally:
        stop(client, execution_id)
    start = int(lines[1].split()[1])
    assert lines[0] == "1000"
    assert uids == [start + 1000] * 4 and gids == [start + 1000] * 4


def test_concurrent_runs_of_two_jobs_get_disjoint_ranges(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    ranges = []
    executions = []
    try:
        for name in ("range-a", "range-b"):
            client.register(document(name, "cat /proc/self/uid_map; sleep 30"), replace=True)
            execution_id, container_id, lines = running(client, name, 1)
            executions.append(execution_id)
            uids, _ = host_ids(agent, container_id)
            start = int(lines[0].split()[1])
            assert uids[0] == start
            ranges.append(range(start, start + RANGE_SIZE))
    finally:
        for execution_id in executions:
            stop(client, execution_id)
    first, second = ranges
    assert first.stop <= second.start or second.stop <= first.start


def test_a_set_uid_file_in_a_named_volume_belongs_to_the_range_and_the_volume_keeps_it(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    storage = "    storage:\n      - {type: named, name: userns-drop, target: /data}\n"
    script = (
        "cp /bin/busybox /data/su && chmod 4755 /data/su && cat /proc/self/uid_map; "
        "stat -c %u:%a /data/su"
    )
    client.register(document("dropper", script, storage), replace=True)
    for _ in range(2):
        execution = client.wait(client.trigger("dropper").id)
        assert execution.status == "completed", execution.message
        lines = [line.message for line in client.logs(execution.id)]
        start = int(lines[0].split()[1])
        assert lines[1] == "0:4755"
        dropped = os.stat(agent.paths.volumes / "userns-drop" / "su")
        assert dropped.st_uid == start and dropped.st_gid == start
        assert dropped.st_mode & stat.S_ISUID


@pytest.fixture(scope="module")
def host_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A host directory that root owns: readable by others, one file root's only."""
    directory = tmp_path_factory.mktemp("hostroot")
    directory.chmod(0o755)
    (directory / "public").write_text("public\n")
    secret = directory / "secret"
    secret.write_text("secret\n")
    secret.chmod(0o600)
    return directory


@pytest.fixture(scope="module")
def lenient(
    tmp_path_factory: pytest.TempPathFactory,
    registry: Registry,
    agent: AgentProcess,
    host_dir: Path,
) -> Iterator[AgentProcess]:
    """An agent that allows binds under `host_dir` and jobs in the host's user namespace,
    with a pool of two ranges."""
    args = (
        *("--bind-allow", str(host_dir), "--allow-host-userns"),
        *("--userns-range", f"{RANGE_START}:{2 * RANGE_SIZE}"),
    )
    data_dir = tmp_path_factory.mktemp("lenient")
    own = start_agent(data_dir, agent.runtime, registry, extra_args=args)
    yield own
    own.stop()
    sweep(own)


def test_the_attackers_root_cannot_write_host_roots_files_or_make_a_set_uid_root_file(
    lenient: AgentProcess, host_dir: Path
) -> None:
    storage = f"    storage:\n      - {{type: bind, source: {host_dir}, target: /host}}\n"
    script = (
        "cat /host/public; cat /host/secret || echo no-read; "
        "echo owned > /host/public || echo no-write; touch /host/new || echo no-create; "
        "chown 0:0 /host/public || echo no-chown; "
        "cp /bin/busybox /su && chmod 4755 /su && echo set-uid; sleep 30"
    )
    with lenient.client() as client:
        client.register(document("attacker", script, storage), replace=True)
        execution_id, container_id, lines = running(client, "attacker", 6)
        try:
            uids, _ = host_ids(lenient, container_id)
            copy = os.stat(lenient.paths.writable / container_id / "upper" / "su")
        finally:
            stop(client, execution_id)
    assert lines == ["public", "no-read", "no-write", "no-create", "no-chown", "set-uid"]
    assert (host_dir / "public").read_text() == "public\n"
    assert not (host_dir / "new").exists()
    assert copy.st_mode & stat.S_ISUID and copy.st_uid == uids[0] and in_range(copy.st_uid)


def test_the_host_namespace_needs_the_agents_flag_and_then_root_is_host_root(
    client: JobAgentClient, lenient: AgentProcess
) -> None:
    extra = "    user_namespace: host\n"
    with pytest.raises(ClientError) as refused:
        client.register(document("host-root", "id -u", extra), replace=True)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.field == "services.host-root.user_namespace"
    with lenient.client() as allowed:
        script = "cat /proc/self/uid_map; sleep 30"
        allowed.register(document("host-root", script, extra), replace=True)
        execution_id, container_id, lines = running(allowed, "host-root", 1)
        try:
            uids, _ = host_ids(lenient, container_id)
        finally:
            stop(allowed, execution_id)
    assert lines[0].split() == ["0", "0", "4294967295"]
    assert uids == [0] * 4


def test_each_registered_job_holds_a_range_until_it_is_unregistered(
    lenient: AgentProcess,
) -> None:
    with lenient.client() as client:
        for job in client.list_jobs():
            client.unregister(job.name)
        client.register(document("first", "true"))
        client.register(document("second", "true"))
        # A job in the host's namespace takes no range.
        client.register(document("on-host", "true", "    user_namespace: host\n"))
        with pytest.raises(ClientError) as full:
            client.register(document("third", "true"))
        assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--userns-range" in full.value.message
        client.unregister("first")
        client.register(document("third", "cat /proc/self/uid_map"))
        execution = client.wait(client.trigger("third").id)
        assert execution.status == "completed", execution.message
        [line] = [line.message for line in client.logs(execution.id)]
        assert int(line.split()[1]) in (RANGE_START, RANGE_START + RANGE_SIZE)


def test_a_named_volume_shared_by_two_jobs_keeps_the_owner_it_was_made_with(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    storage = "    storage:\n      - {type: named, name: userns-shared, target: /data}\n"
    script = "cat /proc/self/uid_map; echo {0} > /data/{0}; stat -c %u /data/first; ls /data"
    client.register(document("maker", script.format("first"), storage), replace=True)
    client.register(document("user", script.format("second"), storage), replace=True)
    seen = {}
    for name in ("maker", "user"):
        execution = client.wait(client.trigger(name).id)
        assert execution.status == "completed", execution.message
        seen[name] = [line.message for line in client.logs(execution.id)]
    maker, user = (int(seen[name][0].split()[1]) for name in ("maker", "user"))
    assert maker != user
    # Inside, each job's root owns the volume's files; on the host, the maker's range does.
    assert seen["maker"][1:] == ["0", "first"] and seen["user"][1:] == ["0", "first", "second"]
    volume = agent.paths.volumes / "userns-shared"
    assert {os.stat(volume / name).st_uid for name in ("", "first", "second")} == {maker}


def test_a_volume_a_host_namespace_job_made_moves_into_the_range_of_the_next(
    lenient: AgentProcess,
) -> None:
    storage = "    storage:\n      - {type: named, name: userns-legacy, target: /data}\n"
    with lenient.client() as client:
        for job in client.list_jobs():
            client.unregister(job.name)
        client.register(
            document("on-host", "echo old > /data/old", storage + "    user_namespace: host\n")
        )
        client.register(document("later", "cat /data/old; echo new > /data/new", storage))
        for name in ("on-host", "later"):
            execution = client.wait(client.trigger(name).id)
            assert execution.status == "completed", execution.message
        assert [line.message for line in client.logs(execution.id)] == ["old"]
    volume = lenient.paths.volumes / "userns-legacy"
    owners = {os.stat(volume / name).st_uid for name in ("", "old", "new")}
    assert len(owners) == 1 and in_range(owners.pop())


async def test_where_the_image_cannot_be_idmapped_a_shifted_copy_serves_each_range(
    tmp_path: Path, registry: Registry, agent: AgentProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(rootfs: Path, directory: Path, userns_fd: int) -> Path:
        (directory / bundle.IMAGE_LINK).symlink_to(rootfs)
        raise OSError(errno.EOPNOTSUPP, "idmapped mounts not supported")

    monkeypatch.setattr(bundle, "mount_idmapped_image", refuse)
    # The layout the agent uses: the bundles on the volatile tmpfs, searchable to them.
    paths = RuntimePaths.under(tmp_path / "data", agent.runtime)
    images = ImageStore(paths.images, insecure_registries=frozenset({registry.host}))
    manager = ContainerManager(paths, shutil.which(agent.runtime) or agent.runtime, images=images)
    ids = IdRange(RANGE_START + 5 * RANGE_SIZE)
    try:
        image = await manager.pull(image_spec(registry))
        for run in range(2):
            container_id = f"shifted-{run}"
            request = ContainerRequest(
                container_id=container_id,
                image=image_spec(registry),
                log_file=tmp_path / "logs" / f"{run}.log",
                command=CommandSpec(
                    entrypoint=("/bin/sh", "-c", "id -u; stat -c %u /bin/busybox; touch /mine")
                ),
                id_range=ids,
            )
            await manager.run(request, image)
            assert (await manager.wait(container_id)).exit_code == 0
            mine = os.stat(paths.writable / container_id / "upper" / "mine").st_uid
            await manager.remove(container_id)
            lines = [line.split(" ", 3)[3] for line in request.log_file.read_text().splitlines()]
            assert lines == ["0", "0"] and mine == ids.start
        copy = image.rootfs.with_name(f"{image.rootfs.name}-{ids.start}")
        assert os.stat(copy / "bin" / "busybox").st_uid == ids.start
        assert os.stat(image.rootfs / "bin" / "busybox").st_uid == 0
    finally:
        manager.close()
        shutil.rmtree(paths.volatile, ignore_errors=True)


def image_spec(registry: Registry) -> ImageSpec:
    return ImageSpec(f"{registry.host}/busybox:latest", PullPolicy.IF_NOT_PRESENT)


def test_a_volume_root_given_to_another_id_maps_nothing_of_the_next_range(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    storage = "    storage:\n      - {type: named, name: userns-chowned, target: /data}\n"
    script = "chown 5:5 /data; touch /data/f; stat -c %u /data /data/f; cat /proc/self/uid_map"
    client.register(document("chowner", script, storage), replace=True)
    for _ in range(2):
        execution = client.wait(client.trigger("chowner").id)
        assert execution.status == "completed", execution.message
        lines = stdout(client, execution.id)
        start = int(lines[2].split()[1])
        # Bound as it is: the job's ids, not shifted by the root's new owner.
        assert lines[:2] == ["5", "0"]
        assert os.stat(agent.paths.volumes / "userns-chowned" / "f").st_uid == start
