"""`user: name` against images that play the attacker: an /etc/passwd that is an endless
device, a FIFO, or an absolute symlink to a host path."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from jobagent_client import Execution, JobAgentClient

from tests.e2e.harness import AgentProcess, Registry

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
    client: JobAgentClient, registry: Registry, example_image: Path, tmp_path: Path
) -> None:
    # The same path names other accounts on the host: those must not be the ones read.
    host_accounts = tmp_path / "accounts"
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
