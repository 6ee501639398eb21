"""What the agent keeps on the host is root's only: a set-uid file a job writes into a
volume, the store, logs, bundles and payloads stay out of other host users' reach,
whatever umask the agent was started with."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.e2e.conftest import RUNTIMES, start_agent
from tests.e2e.harness import AgentProcess, Registry, host_user, sweep, wait_until

SETUID_JOB = (
    "version: v1\ndeployment: hygiene\nservices:\n  setuid:\n    rtype: job\n"
    "    image: {name: busybox:latest}\n"
    "    storage:\n"
    "      - {type: named, name: v, target: /v}\n"
    "      - {type: anonymous, target: /a}\n"
    "    dispatch: {payload: optional}\n"
    "    command:\n"
    "      entrypoint: [/bin/sh, -c]\n"
    "      args: ['for d in /v /a; do cp /bin/busybox $d/bb && chmod 4755 $d/bb; done;"
    " umask; touch /a/done; sleep 60']\n"
)


@pytest.fixture
def prober() -> Iterator[str]:
    """An unprivileged host user, removed afterwards."""
    with host_user("probe") as name:
        yield name


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A directory that every host user may traverse (0755 up to /), so that only the
    agent's own modes stand between them and its data directory."""
    parent = Path(tempfile.mkdtemp(prefix="jobagent-hygiene-", dir="/var/tmp"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def start(data_dir: Path, registry: Registry, umask: int) -> AgentProcess:
    # As an older agent or an operator's mkdir under umask 022 left it: tightened at start.
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    (data_dir / "logs").mkdir()
    (data_dir / "logs").chmod(0o755)
    return start_agent(data_dir, RUNTIMES[0], registry, umask=umask)


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_nothing_the_agent_keeps_is_reachable_by_another_user(
    registry: Registry, open_parent: Path, prober: str, umask: int
) -> None:
    data_dir = open_parent / "data"
    agent = start(data_dir, registry, umask)
    try:
        assert "tightened" in agent.log_file.read_text()
        with agent.client() as client:
            client.register(SETUID_JOB, replace=True)
            execution = client.trigger("setuid", payload=b"secret payload")
            container_id = client.get_execution(execution.id).container_id
            writable = agent.paths.writable / container_id
            done = writable / "anonymous" / "1" / "done"
            wait_until(done.exists, 30, "the job to write its set-uid files")
            volume_file = data_dir / "volumes" / "v" / "bb"
            anonymous_file = writable / "anonymous" / "1" / "bb"
            bundle = agent.paths.bundles / container_id
            log_dir = data_dir / "logs" / execution.id
            for setuid in (volume_file, anonymous_file):
                assert os.stat(setuid).st_mode & stat.S_ISUID, setuid
            check_modes(agent, data_dir, bundle, log_dir)
            secrets = [volume_file, anonymous_file, data_dir / "agent.db", log_dir / "1.log"]
            secrets += [bundle / "config.json", bundle / "files" / "0"]
            check_as_user(prober, agent, data_dir, secrets)
            client.cancel(execution.id, grace=timedelta(0))
            ended = client.wait(execution.id)
            assert ended.status == "cancelled"
            assert [line.message for line in client.logs(execution.id)][:1] == ["0022"]
            check_as_user(prober, agent, data_dir, [volume_file, log_dir / "1.log"])
    finally:
        agent.stop()
        sweep(agent)


def check_modes(agent: AgentProcess, data_dir: Path, bundle: Path, log_dir: Path) -> None:
    """The modes themselves: the tops 0700, every entry in them owner-only, the files the
    agent writes exactly as it means them. The bundles and their parent are searchable
    only: a job's mapped root reaches its own bundle, which is its range's group's only."""
    volatile = agent.paths.volatile
    assert mode_of(data_dir) == 0o700
    assert mode_of(volatile) == 0o711
    assert mode_of(volatile.parent) & 0o077 in (0o011, 0o000)
    assert mode_of(agent.paths.bundles) == 0o711
    for top in (data_dir, volatile):
        for entry in top.iterdir():
            if entry != agent.paths.bundles:
                assert mode_of(entry) & 0o077 == 0, (entry, oct(mode_of(entry)))
    for name in ("agent.db", "agent.db-wal", "agent.db-shm"):
        assert mode_of(data_dir / name) == 0o600, name
    assert mode_of(log_dir) == 0o700
    assert mode_of(log_dir / "1.log") == 0o600
    range_root = os.stat(bundle).st_gid
    assert mode_of(bundle) == 0o710 and range_root >= 1 << 20
    assert mode_of(bundle / "config.json") == 0o600
    payload = bundle / "files" / "0"
    # The job's root owns it: its range's root on the host.
    assert (mode_of(payload), os.stat(payload).st_uid) == (0o400, range_root)
    # Whatever the agent's umask, nothing it or its children made is writable by others
    # (what a container sees as its own files keeps the modes the image or the job gave).
    for top in (data_dir, volatile):
        for path in walk_agent_files(top):
            assert mode_of(path) & 0o022 == 0, (path, oct(mode_of(path)))


def walk_agent_files(top: Path) -> Iterator[Path]:
    """Every path under `top` but the trees a container sees as its own files (volumes,
    writable layers, unpacked images and mounted rootfs) and symlinks."""
    container_trees = {"v", "upper", "work", "rootfs", "anonymous", "image-idmapped", "volumes"}
    for root, directories, files in os.walk(top):
        directories[:] = [name for name in directories if name not in container_trees]
        for name in (*directories, *files):
            path = Path(root) / name
            if not path.is_symlink():
                yield path


def check_as_user(user: str, agent: AgentProcess, data_dir: Path, secrets: list[Path]) -> None:
    """What another host user gets: nothing past the top directories."""
    assert as_user(user, "test", "-x", str(data_dir.parent)).returncode == 0
    for top in (data_dir, agent.paths.volatile):
        listing = as_user(user, "find", str(top))
        assert listing.stdout.strip().splitlines() == [str(top)], listing.stdout
        assert "Permission denied" in listing.stderr
    for path in secrets:
        for argv in (["stat", str(path)], ["cat", str(path)], [str(path), "id", "-u"]):
            attempt = as_user(user, *argv)
            assert attempt.returncode != 0, (argv, attempt.stdout)
