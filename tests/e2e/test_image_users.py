"""`user: name` against images that play the attacker: an /etc/passwd that is an endless
device, a FIFO, an absolute symlink to a host path, or a link to where the container has
the runtime's devices or a job's volume."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from jobagent_client import Execution, JobAgentClient

from tests.e2e.harness import AgentProcess, Registry, settled_leftovers, wait_until

ACCOUNTS = "root:x:0:0::/:/bin/sh\napp:x:4242:4343::/:/bin/sh\n"


def image_with(
    example_image: Path,
    tmp_path: Path,
    registry: Registry,
    tag: str,
    change: Callable[[Path], None],
) -> str:
    """The example image with `change` made to its root filesystem, pushed as busybox:`tag`;
    returns its name for a job spec."""
    layout = tmp_path / tag
    shutil.copytree(example_image, layout)
    bundle = tmp_path / f"{tag}-bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:latest", str(bundle)],
        check=True,
        capture_output=True,
    )
    (bundle / "rootfs" / "etc").mkdir(exist_ok=True)
    change(bundle / "rootfs")
    subprocess.run(
        ["umoci", "repack", "--image", f"{layout}:latest", str(bundle)],
        check=True,
        capture_output=True,
    )
    return registry.push(layout, f"busybox:{tag}")


def run_as_app(client: JobAgentClient, name: str, image: str) -> tuple[Execution, list[str]]:
    client.register(
        f"version: v1\ndeployment: users\nservices:\n  {name}:\n    rtype: job\n"
        f"    image: {{name: '{image}'}}\n    user: app\n"
        "    command: {entrypoint: [/bin/sh, -c, 'id -u; id -g']}\n",
        replace=True,
    )
    execution = client.wait(client.trigger(name).id)
    return execution, [line.message for line in client.logs(execution.id)]


def ended(client: JobAgentClient, execution_id: str, seconds: float) -> Execution:
    """The execution once terminal; fails the test when it is not within `seconds` (a
    create that hangs would otherwise hang the test)."""
    terminal = ("completed", "failed", "cancelled")
    wait_until(
        lambda: client.get_execution(execution_id).status in terminal,
        seconds,
        f"execution {execution_id} to end",
    )
    return client.get_execution(execution_id)


def runtime_urandom(rootfs: Path) -> None:
    """A regular /dev/urandom in the image, and /etc/passwd a link to it: regular as far as
    the image goes, the runtime's endless device in the container (its /dev a tmpfs)."""
    (rootfs / "dev").mkdir(exist_ok=True)
    (rootfs / "dev" / "urandom").write_text(ACCOUNTS)
    (rootfs / "etc" / "passwd").unlink(missing_ok=True)
    (rootfs / "etc" / "passwd").symlink_to("/dev/urandom")


def resident_bytes(agent: AgentProcess) -> int:
    assert agent.process is not None
    status = Path(f"/proc/{agent.process.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def blocked_threads(agent: AgentProcess) -> list[str]:
    """The agent's threads waiting in the kernel for the other end of a FIFO."""
    assert agent.process is not None
    tasks = Path(f"/proc/{agent.process.pid}/task")
    return [
        task.name for task in tasks.iterdir() if (task / "wchan").read_text() == "wait_for_partner"
    ]


def test_an_absolute_symlink_is_resolved_inside_the_image(
    client: JobAgentClient,
    registry: Registry,
    example_image: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    # The same path names other accounts on the host: those must not be the ones read. Not
    # under /tmp: the container has a tmpfs there, and a table that leads under a mount
    # is refused.
    host_accounts = Path(tempfile.mkdtemp(dir="/var/tmp")) / "accounts"
    request.addfinalizer(lambda: shutil.rmtree(host_accounts.parent))
    host_accounts.write_text("app:x:1111:1111::/:/bin/sh\n")

    def link_to_an_absolute_path(rootfs: Path) -> None:
        inside = rootfs / str(host_accounts).lstrip("/")
        inside.parent.mkdir(parents=True)
        inside.write_text(ACCOUNTS)
        (rootfs / "etc" / "passwd").symlink_to(host_accounts)

    image = image_with(example_image, tmp_path, registry, "passwd-link", link_to_an_absolute_path)
    execution, output = run_as_app(client, "linked", image)
    assert execution.status == "completed", execution.message
    assert output == ["4242", "4343"]


def test_an_endless_or_blocking_passwd_fails_create_and_spares_the_agent(
    client: JobAgentClient,
    agent: AgentProcess,
    registry: Registry,
    example_image: Path,
    tmp_path: Path,
) -> None:
    def zero_device(rootfs: Path) -> None:
        (rootfs / "dev").mkdir(exist_ok=True)
        os.mknod(rootfs / "dev" / "zero", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
        (rootfs / "etc" / "passwd").symlink_to("/dev/zero")

    def fifo(rootfs: Path) -> None:
        os.mkfifo(rootfs / "etc" / "passwd")

    def host_zero(rootfs: Path) -> None:
        (rootfs / "etc" / "passwd").symlink_to("/dev/zero")

    before = resident_bytes(agent)
    # Without a /dev/zero of its own, the image's link leads nowhere there; in the container
    # it would reach the runtime's /dev/zero.
    absent = "/etc/passwd in the image is a symlink to nothing in the image"
    cases = (
        ("passwd-zero", zero_device, "is a character device"),
        ("passwd-fifo", fifo, "is a FIFO"),
        ("passwd-host-zero", host_zero, absent),
    )
    for tag, change, why in cases:
        image = image_with(example_image, tmp_path, registry, tag, change)
        execution, output = run_as_app(client, tag, image)
        assert (execution.status, execution.failure_reason) == ("failed", "create"), tag
        assert why in execution.message and output == []
    # The runtime itself opens /etc/passwd as the container starts, whatever the user, and
    # would block on the FIFO: the image is refused, whoever the job runs as.
    client.register(
        "version: v1\ndeployment: users\nservices:\n  as-root:\n    rtype: job\n"
        f"    image: {{name: '{registry.host}/busybox:passwd-fifo'}}\n"
        "    command: {entrypoint: [/bin/echo, ran]}\n",
        replace=True,
    )
    execution = client.wait(client.trigger("as-root").id)
    assert (execution.status, execution.failure_reason) == ("failed", "create")
    assert "is a FIFO" in execution.message
    assert blocked_threads(agent) == []
    assert resident_bytes(agent) - before < 64 << 20

    # The agent still runs jobs.
    def ordinary(rootfs: Path) -> None:
        (rootfs / "etc" / "passwd").write_text(ACCOUNTS)

    fine = image_with(example_image, tmp_path, registry, "passwd-fine", ordinary)
    execution, output = run_as_app(client, "fine", fine)
    assert execution.status == "completed" and output == ["4242", "4343"]


def test_a_passwd_linked_to_a_runtime_device_fails_create_and_holds_no_slot(
    client: JobAgentClient,
    agent: AgentProcess,
    registry: Registry,
    example_image: Path,
    tmp_path: Path,
) -> None:
    """The attack: the image ships a regular file at /dev/urandom and links /etc/passwd to
    it. The image's check saw a regular file; in the container the link reaches the
    runtime's /dev/urandom, which youki read for HOME before reporting the container
    created: the run stayed Initializing past its timeout, held its slot for good, and
    kept the agent from stopping. Now the run fails at create, naming the mount, and
    leaves nothing behind."""
    image = image_with(example_image, tmp_path, registry, "passwd-urandom", runtime_urandom)
    client.register(
        "version: v1\ndeployment: users\nservices:\n  urandom:\n    rtype: job\n"
        f"    image: {{name: '{image}'}}\n    timeout: 5s\n"
        "    command: {entrypoint: [/bin/echo, ran]}\n",
        replace=True,
    )
    fails_create_and_leaves_nothing(
        client,
        agent,
        "urandom",
        "/etc/passwd in the image leads to /dev/urandom, under /dev, where the container "
        "has a tmpfs mount of its own",
    )


def fails_create_and_leaves_nothing(
    client: JobAgentClient, agent: AgentProcess, job: str, message: str
) -> None:
    """A run of `job` is Failed, CREATE, with a message that starts with `message`, and
    leaves nothing of its container behind."""
    execution = ended(client, client.trigger(job).id, 30)
    assert (execution.status, execution.failure_reason) == ("failed", "create"), execution
    assert execution.message.startswith(message), execution.message
    assert settled_leftovers(agent, execution.container_id) == []


def test_a_volume_mounted_over_the_account_tables_fails_create(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    """The attack: a run leaves a FIFO named passwd in its named volume, and the job is
    registered again with that volume mounted at /etc. The runtime would open the FIFO
    as /etc/passwd while creating the container, and wait for a writer for good; the
    image's own /etc/passwd is fine. Now the run fails at create."""

    def register(target: str, script: str) -> None:
        client.register(
            "version: v1\ndeployment: users\nservices:\n  tables:\n    rtype: job\n"
            "    image: {name: busybox:latest}\n    timeout: 5s\n"
            f"    storage: [{{type: named, name: tables, target: {target}}}]\n"
            f"    command: {{entrypoint: [/bin/sh, -c, '{script}']}}\n",
            replace=True,
        )

    register("/data", "mkfifo /data/passwd")
    planted = ended(client, client.trigger("tables").id, 30)
    assert planted.status == "completed", planted.message
    register("/etc", "echo ran")
    fails_create_and_leaves_nothing(
        client,
        agent,
        "tables",
        "/etc/passwd in the image leads to /etc/passwd, under /etc, where the container has "
        "a bind mount of its own",
    )


def test_the_agent_gives_the_process_its_home_so_the_runtime_looks_up_nothing(
    client: JobAgentClient, registry: Registry, example_image: Path, tmp_path: Path
) -> None:
    """Without HOME in the process's env the runtime looks it up itself, reading the
    container's /etc/passwd before the container is created: the read that an endless
    passwd turned into a create that never ended. The agent now sets HOME from the entry
    it read for the user, so the runtime reads nothing: a user named in the spec gets its
    own entry's home even where an earlier entry shares its uid (the runtime, which
    looks up the uid, took that earlier entry's)."""

    def shared_uid(rootfs: Path) -> None:
        (rootfs / "etc" / "passwd").unlink(missing_ok=True)
        (rootfs / "etc" / "passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\n"
            "other:x:4242:4343::/home/other:/bin/sh\n"
            "app:x:4242:4343::/home/app:/bin/sh\n"
        )

    image = image_with(example_image, tmp_path, registry, "passwd-shared-uid", shared_uid)
    homes = {}
    for name, extra in (
        ("as-app", "    user: app\n"),
        ("as-root", ""),
        ("own-home", "    env: {HOME: /work}\n"),
    ):
        client.register(
            f"version: v1\ndeployment: users\nservices:\n  {name}:\n    rtype: job\n"
            f"    image: {{name: '{image}'}}\n{extra}"
            "    command: {entrypoint: [/bin/sh, -c, 'echo $HOME']}\n",
            replace=True,
        )
        execution = ended(client, client.trigger(name).id, 30)
        assert execution.status == "completed", execution.message
        homes[name] = [line.message for line in client.logs(execution.id)]
    assert homes == {"as-app": ["/home/app"], "as-root": ["/root"], "own-home": ["/work"]}
