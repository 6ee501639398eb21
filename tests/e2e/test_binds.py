"""Bind mounts against a job that plays the attacker: symlinks planted after registration,
writes and remounts of a read-only bind; and what is left once a bind is refused."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from jobagent_client import Execution, JobAgentClient

from tests.e2e.conftest import start_agent
from tests.e2e.harness import AgentProcess, Registry, settled_leftovers, sweep, wait_until


@dataclass
class Allowing:
    """An agent started with --bind-allow `allowed`, and a client of it."""

    agent: AgentProcess
    client: JobAgentClient
    allowed: Path


@pytest.fixture(scope="module")
def allowing(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, agent: AgentProcess
) -> Iterator[Allowing]:
    allowed = tmp_path_factory.mktemp("srv-in")
    # Open to every user: jobs run in their own user namespaces, so what stops them below is
    # the mount and the path's resolution, not the directory's owner.
    allowed.chmod(0o1777)
    own = start_agent(
        tmp_path_factory.mktemp("binds"),
        agent.runtime,
        registry,
        extra_args=("--bind-allow", str(allowed)),
    )
    with own.client() as client:
        yield Allowing(own, client, allowed)
    own.stop()
    sweep(own)


def register(client: JobAgentClient, name: str, storage: str, script: str, extra: str = "") -> None:
    client.register(
        f"version: v1\ndeployment: binds\nservices:\n  {name}:\n    rtype: job\n"
        f"    image: {{name: busybox:latest}}\n    storage:\n{storage}{extra}"
        f"    command: {{entrypoint: [/bin/sh, -c, {script!r}]}}\n",
        replace=True,
    )


def run(client: JobAgentClient, name: str) -> tuple[Execution, list[str]]:
    execution = client.wait(client.trigger(name).id)
    return execution, [line.message for line in client.logs(execution.id)]


def mounts_under(directory: Path) -> list[str]:
    """The lines of this mount namespace's mountinfo with a mount point under `directory`."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if line.split()[4].startswith(f"{directory}/")]


def test_a_symlink_planted_after_the_policy_check_does_not_lead_a_bind_out(
    allowing: Allowing,
) -> None:
    client, allowed = allowing.client, allowing.allowed
    register(
        client,
        "plant",
        f"      - {{type: bind, source: {allowed}, target: /in}}\n",
        "ln -s /etc /in/x",
    )
    # Registered, triggered and admitted while x does not exist: every check of the path
    # string passes. The init step holds the run between that check and the mount.
    nap = "    init:\n      steps:\n        - {id: nap, uses: init.sleep, with: {duration: 8s}}\n"
    register(
        client,
        "steal",
        f"      - {{type: bind, source: {allowed}/x, target: /hostetc, readonly: true}}\n",
        "head -c 60 /hostetc/shadow",
        nap,
    )
    stealing = client.trigger("steal")
    wait_until(
        lambda: client.get_execution(stealing.id).status == "initializing", 30, "the init step"
    )
    planted, _ = run(client, "plant")
    assert planted.status == "completed", planted.message
    assert (allowed / "x").is_symlink()
    refused = client.wait(stealing.id)
    output = [line.message for line in client.logs(refused.id)]
    assert (refused.status, refused.failure_reason) == ("failed", "create")
    assert "storage[0]" in refused.message and "leads out of" in refused.message
    assert output == []
    for execution in (planted, refused):
        assert settled_leftovers(allowing.agent, execution.container_id) == []
    assert mounts_under(allowing.agent.paths.bundles) == []
    (allowed / "x").unlink()


def test_a_read_only_bind_refuses_writes_and_remounts(allowing: Allowing) -> None:
    client, allowed = allowing.client, allowing.allowed
    (allowed / "ro").mkdir(mode=0o777)
    (allowed / "ro").chmod(0o777)
    (allowed / "ro" / "settings").write_text("keep\n")
    (allowed / "ro" / "settings").chmod(0o666)
    storage = (
        f"      - {{type: bind, source: {allowed}/ro, target: /in, readonly: true}}\n"
        f"      - {{type: bind, source: {allowed}/ro/settings, target: /etc/app.conf,"
        " readonly: true}\n"
    )
    script = (
        "cat /etc/app.conf; touch /in/new 2>/dev/null && echo wrote || echo write-refused; "
        "mount -o remount,rw /in 2>/dev/null && echo remounted || echo remount-refused; "
        "mount -o remount,rw,bind /in 2>/dev/null && echo remounted || echo remount-refused; "
        "(echo x > /in/settings) 2>/dev/null && echo wrote || echo still-refused; "
        "grep ' /in ' /proc/self/mountinfo | cut -d' ' -f6 | cut -d, -f1"
    )
    register(client, "guarded", storage, script)
    execution, output = run(client, "guarded")
    assert execution.status == "completed", execution.message
    assert output == [
        "keep",
        "write-refused",
        "remount-refused",
        "remount-refused",
        "still-refused",
        "ro",
    ]
    assert sorted(path.name for path in (allowed / "ro").iterdir()) == ["settings"]
    assert (allowed / "ro" / "settings").read_text() == "keep\n"


def test_a_staged_bind_is_read_only_on_the_host_and_goes_with_the_container(
    allowing: Allowing,
) -> None:
    client, allowed = allowing.client, allowing.allowed
    (allowed / "held").mkdir()
    register(
        client,
        "holder",
        f"      - {{type: bind, source: {allowed}/held, target: /h, readonly: true}}\n",
        "sleep 60",
    )
    execution = client.trigger("holder")
    staged = allowing.agent.paths.bundles / f"ja-{execution.id}"
    wait_until(lambda: mounts_under(staged / "binds"), 30, "the staged bind")
    [line] = mounts_under(staged / "binds")
    assert line.split()[3] == str(allowed / "held")
    assert {"ro", "nosuid", "nodev"} <= set(line.split()[5].split(","))
    ended = client.cancel(execution.id, grace=timedelta(0))
    assert ended.status == "cancelled", ended.message
    assert settled_leftovers(allowing.agent, ended.container_id) == []
    assert mounts_under(staged) == []


def test_a_writable_bind_writes_through_as_the_jobs_range_and_a_missing_source_is_made(
    allowing: Allowing,
) -> None:
    client, allowed = allowing.client, allowing.allowed
    (allowed / "open").mkdir()
    (allowed / "open").chmod(0o777)
    register(
        client,
        "writer",
        f"      - {{type: bind, source: {allowed}/open, target: /out}}\n"
        f"      - {{type: bind, source: {allowed}/made/here, target: /made}}\n",
        "echo result > /out/file; test -d /made && echo made; "
        "touch /made/x 2>/dev/null && echo wrote || echo refused",
    )
    execution, output = run(client, "writer")
    assert execution.status == "completed", execution.message
    assert output == ["made", "refused"]
    written = allowed / "open" / "file"
    assert written.read_text() == "result\n"
    # Written by the job's root, which is an unprivileged id of its range on the host.
    assert written.stat().st_uid >= 1 << 20
    # Made by the agent beneath the allowed directory, owned by host root: the job reaches
    # it only as any other host user would.
    made = (allowed / "made" / "here").stat()
    assert made.st_uid == 0
    assert list((allowed / "made" / "here").iterdir()) == []
