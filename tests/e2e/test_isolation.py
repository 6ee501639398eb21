"""The isolation of a job, played from inside it: the seccomp allowlist, masked paths and
the default limits, with an agent whose settings each test relies on."""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from jobagent_client import ClientError, JobAgentClient

from tests.e2e.conftest import RUNTIMES, start_agent
from tests.e2e.harness import AgentProcess, Registry, sweep, wait_until

PROBE_SOURCE = Path(__file__).parent / "probes" / "nsprobe.c"
PIDS_LIMIT = 96
TMP_SIZE_KIB = 16 * 1024
CGROUP_PARENT = "jobagent-isolation/jobs"
CGROUP = Path("/sys/fs/cgroup")
MASKED_FILES = (
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/interrupts",
)


@pytest.fixture(scope="module")
def probe_image(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, example_image: Path
) -> str:
    """The example image with /bin/nsprobe, a static C program that calls clone, clone3,
    unshare, personality and io_uring_setup itself; returns its pull reference."""
    work = tmp_path_factory.mktemp("probe")
    binary = work / "nsprobe"
    build = ["gcc", "-static", "-O2", "-o", str(binary), str(PROBE_SOURCE)]
    subprocess.run(build, check=True, capture_output=True)
    layout = work / "layout"
    shutil.copytree(example_image, layout)
    insert = ["umoci", "insert", "--image", f"{layout}:latest", str(binary), "/bin/nsprobe"]
    subprocess.run(insert, check=True, capture_output=True)
    return registry.push(layout, "nsprobe:latest")


@pytest.fixture(scope="module", params=RUNTIMES)
def isolated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, registry: Registry
) -> Iterator[AgentProcess]:
    """An agent that lets jobs add SYS_ADMIN, with a small default pids limit and /tmp,
    and its jobs' cgroups under a parent of two levels."""
    runtime: str = request.param
    flags = f"""--allow-capability SYS_ADMIN --default-pids-limit {PIDS_LIMIT}
        --default-tmp-size {TMP_SIZE_KIB}Ki --cgroup-parent {CGROUP_PARENT}"""
    directory = tmp_path_factory.mktemp(f"isolation-{runtime}")
    agent = start_agent(directory, runtime, registry, extra_args=tuple(flags.split()))
    yield agent
    agent.stop()
    sweep(agent)
    remove_parent_cgroups()


def remove_parent_cgroups() -> None:
    """Removes the (by now empty) parent cgroups the runtime made, in every hierarchy."""
    parts = CGROUP_PARENT.split("/")
    for hierarchy in (CGROUP, *(entry for entry in CGROUP.iterdir() if entry.is_dir())):
        for depth in range(len(parts), 0, -1):
            with contextlib.suppress(OSError):
                (hierarchy / "/".join(parts[:depth])).rmdir()


def pids_file(container_id: str, name: str) -> Path:
    """pids.max or pids.current of a container, in whichever hierarchy has pids."""
    for hierarchy in (CGROUP / "pids", CGROUP, CGROUP / "unified"):
        path = hierarchy / CGROUP_PARENT / container_id / name
        if path.exists():
            return path
    raise AssertionError(f"no pids cgroup for {container_id} under {CGROUP_PARENT}")


def run_job(
    client: JobAgentClient, name: str, image: str, script: str, extra: str = ""
) -> dict[str, str]:
    """Runs a job to completion; returns its `key=value` output lines as a mapping."""
    client.register(
        f"version: v1\ndeployment: isolation\nservices:\n  {name}:\n    rtype: job\n"
        f"    image: {{name: '{image}'}}\n{extra}"
        f"    command: {{entrypoint: [/bin/sh, -c, {json.dumps(script)}]}}\n",
        replace=True,
    )
    execution = client.wait(client.trigger(name).id)
    assert execution.status == "completed", execution.message
    lines = [line.message for line in client.logs(execution.id, stream="stdout")]
    return dict(line.split("=", 1) for line in lines if "=" in line)


NAMESPACE_ATTEMPTS = (
    "unshare -U true; echo unshare_user=$?; unshare -n true; echo unshare_net=$?; /bin/nsprobe"
)


def test_a_default_job_makes_no_namespace_and_runs_ordinary_programs(
    isolated: AgentProcess, probe_image: str
) -> None:
    ordinary = (
        "seq 1 4 | awk '{s += $1} END {print \"sum=\" s}'; sleep 0.1; "
        "echo child=$(sh -c 'echo $$' | wc -l)"
    )
    with isolated.client() as client:
        seen = run_job(client, "contained", probe_image, f"{ordinary}; {NAMESPACE_ATTEMPTS}")
    assert (seen["sum"], seen["child"]) == ("10", "1")
    assert seen["unshare_user"] != "0" and seen["unshare_net"] != "0"
    eperm, enosys = str(errno.EPERM), str(errno.ENOSYS)
    assert seen["clone"] == "0"
    assert (seen["clone_newuser"], seen["clone_newnet"]) == (eperm, eperm)
    assert seen["clone3_newuser"] == enosys  # libc falls back to the filtered clone
    assert seen["unshare_newuser"] == eperm
    assert (seen["personality_query"], seen["personality_read_implies_exec"]) == ("0", eperm)
    assert seen["io_uring_setup"] == eperm


def test_a_job_granted_sys_admin_gets_the_sys_admin_group(
    isolated: AgentProcess, probe_image: str
) -> None:
    with isolated.client() as client:
        extra = "    capabilities: [SYS_ADMIN]\n"
        seen = run_job(client, "admin", probe_image, NAMESPACE_ATTEMPTS, extra)
    assert (seen["unshare_user"], seen["unshare_net"]) == ("0", "0")
    for call in ("clone", "clone_newuser", "clone_newnet", "clone3_newuser", "unshare_newuser"):
        assert seen[call] == "0", call
    # What SYS_ADMIN does not open stays shut.
    eperm = str(errno.EPERM)
    assert (seen["io_uring_setup"], seen["personality_read_implies_exec"]) == (eperm, eperm)


def test_host_details_are_masked_and_tmp_has_the_default_size(isolated: AgentProcess) -> None:
    script = (
        f"for path in {' '.join(MASKED_FILES)}; do echo $path=$(cat $path | wc -c); done; "
        "echo /sys/firmware=$(ls /sys/firmware | wc -l); "
        "echo tmp=$(df -k /tmp | awk 'NR == 2 {print $2}'); "
        "echo sysrq=$(echo h 2>/dev/null > /proc/sysrq-trigger && echo written)"
    )
    with isolated.client() as client:
        seen = run_job(client, "masked", "busybox:latest", script)
    for path in (*MASKED_FILES, "/sys/firmware"):
        assert seen[path] == "0", path
    assert seen["tmp"] == str(TMP_SIZE_KIB)
    assert seen["sysrq"] == ""


def test_a_fork_storm_stops_at_the_default_pids_limit_and_the_node_answers(
    isolated: AgentProcess,
) -> None:
    with isolated.client() as client:
        client.register(
            "version: v1\ndeployment: isolation\nservices:\n  storm:\n    rtype: job\n"
            "    image: {name: busybox:latest}\n"
            # The storm's shell gives up when fork fails; the job then holds what it made.
            "    command: {entrypoint: [/bin/sh, -c, '(while true; do sleep 100 & done); "
            "exec sleep 60']}\n",
            replace=True,
        )
        storm = client.trigger("storm")
        wait_until(lambda: client.get_execution(storm.id).status == "running", 30, "the storm")
        cid = client.get_execution(storm.id).container_id
        assert pids_file(cid, "pids.max").read_text().strip() == str(PIDS_LIMIT)
        current = pids_file(cid, "pids.current")
        wait_until(lambda: int(current.read_text()) >= PIDS_LIMIT - 1, 60, "the limit")
        started = time.monotonic()
        assert client.node_info().runtime
        assert "storm" in [job.name for job in client.list_jobs()]
        calm = run_job(client, "calm", "busybox:latest", "echo alive=yes")
        assert calm == {"alive": "yes"} and time.monotonic() - started < 30
        assert int(current.read_text()) <= PIDS_LIMIT
        final = client.cancel(storm.id)
        assert final.status == "cancelled"
        stderr = [line.message for line in client.logs(storm.id, stream="stderr")]
    assert any("can't fork" in line for line in stderr), stderr[-5:]


def test_a_job_on_its_own_network_cannot_have_the_agent_probe_the_hosts(
    isolated: AgentProcess,
) -> None:
    """A wait step would probe from the agent, on the host's network: a job whose own
    network is loopback only may not have one."""
    step = "{id: peek, uses: init.wait_tcp, with: {host: 127.0.0.1, port: 22, timeout: 1}}"
    with isolated.client() as client, pytest.raises(ClientError) as caught:
        client.register(
            "version: v1\ndeployment: isolation\nservices:\n  peek:\n    rtype: job\n"
            f"    image: {{name: busybox:latest}}\n    init: {{steps: [{step}]}}\n",
            replace=True,
        )
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "services.peek.init.steps[0].uses"
