"""Closed by default: the agent's own socket, its admin token, TCP only with authentication,
and what a local user who was not given access gets."""

from __future__ import annotations

import grp
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobagent_client import JobAgentClient

from agent.api.limits import DEFAULT_MAX_STREAMS_PER_CALLER
from agent.api.sockets import clear_stale
from agent.config import DEFAULT_SOCKET
from agent.errors import InvalidSpec
from tests import tools
from tests.e2e.certs import make_certificates
from tests.e2e.conftest import RUNTIMES, STARTED, start_agent
from tests.e2e.harness import DEFAULT_LISTEN, AgentProcess, Registry, free_port, host_user, sweep
from tests.rawh2 import SilentCaller

JOBCTL = str(Path(sys.executable).parent / "jobctl")
JOB = (
    "version: v1\ndeployment: access\nservices:\n  hello:\n    rtype: job\n"
    "    image: {name: busybox:latest}\n    command: {entrypoint: [/bin/echo, hello]}\n"
)


def admin_token(agent: AgentProcess) -> str:
    """The admin token the agent made in its data directory."""
    return (agent.cwd / agent.data_dir / "admin.token").read_text().strip()


def jobctl(*words: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Runs jobctl with only `env` (and PATH) as its environment."""
    return subprocess.run(
        [JOBCTL, *words],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )


def serve_refused(directory: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Runs `jobagent serve` with `flags`, expecting it to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--data-dir", str(directory / "data"), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def default_agent(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry
) -> Iterator[AgentProcess]:
    """An agent given no --listen: it serves on the default socket only."""
    try:
        clear_stale(DEFAULT_SOCKET)
    except InvalidSpec as error:
        pytest.skip(f"the default socket is taken: {error}")
    directory = tmp_path_factory.mktemp("default")
    agent = start_agent(directory, RUNTIMES[0], registry, listen=DEFAULT_LISTEN)
    yield agent
    agent.stop()
    sweep(agent)


@dataclass(frozen=True)
class Stranger:
    """A local user given no access to the agent, calling it with grpcurl (a static
    binary, copied where that user may run it)."""

    name: str
    grpcurl: Path

    def call(self, address: str, *flags: str) -> subprocess.CompletedProcess[str]:
        """`grpcurl -plaintext FLAGS ADDRESS list jobagent.v1.JobService` (a unix:/PATH
        address as it is: grpcurl 1.9.3's -unix flag dials TCP), as this user with only
        this user's own group."""
        argv = [str(self.grpcurl), "-plaintext", "-max-time", "20", *flags, address]
        return subprocess.run(
            [*argv, "list", "jobagent.v1.JobService"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            user=self.name,
            group=self.name,
            extra_groups=[],
        )


@pytest.fixture(scope="module")
def stranger() -> Iterator[Stranger]:
    """A new local user (and its own group), removed afterwards."""
    tools.require("grpcurl")
    found = tools.find("grpcurl")
    assert found is not None
    place = Path(tempfile.mkdtemp(prefix="jobagent-stranger-"))
    with host_user("stranger") as name:
        try:
            place.chmod(0o755)
            shutil.copy(found, place / "grpcurl")
            yield Stranger(name, place / "grpcurl")
        finally:
            shutil.rmtree(place, ignore_errors=True)


def test_the_default_listener_is_a_socket_only_root_may_reach(default_agent: AgentProcess) -> None:
    info = DEFAULT_SOCKET.lstat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (0, os.getegid())
    directory = DEFAULT_SOCKET.parent.stat()
    assert directory.st_uid == 0 and stat.S_IMODE(directory.st_mode) & 0o022 == 0
    log = default_agent.log_file.read_text()
    assert f"serving on {DEFAULT_LISTEN}" in log and "--insecure" not in log


def test_the_admin_token_is_private_and_jobctl_finds_it_and_the_socket(
    default_agent: AgentProcess,
) -> None:
    token_file = default_agent.cwd / default_agent.data_dir / "admin.token"
    info = token_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.geteuid()
    spec = token_file.parent / "hello.yaml"
    spec.write_text(JOB)
    # No flags: the default socket, and the token from the environment.
    by_file = {"JOBAGENT_TOKEN_FILE": str(token_file)}
    assert jobctl("register", str(spec), "--replace", env=by_file).returncode == 0
    run = jobctl("trigger", "hello", "--follow", env=by_file)
    assert run.returncode == 0, run.stderr
    assert "hello" in run.stdout.splitlines()
    listed = jobctl("jobs", env={"JOBAGENT_TOKEN": admin_token(default_agent)})
    assert listed.returncode == 0 and "hello" in listed.stdout
    anonymous = jobctl("jobs", env={"JOBAGENT_TOKEN": "not-the-admin-token-at-all"})
    assert anonymous.returncode == 1 and "UNAUTHENTICATED" in anonymous.stderr


def test_a_second_agent_on_a_live_socket_refuses_to_start(
    default_agent: AgentProcess, tmp_path: Path
) -> None:
    second = serve_refused(tmp_path, "--runtime", RUNTIMES[0])
    assert second.returncode == 2
    assert f"another process (an agent?) is serving on {DEFAULT_SOCKET}" in second.stderr
    assert default_agent.serving() and stat.S_ISSOCK(DEFAULT_SOCKET.lstat().st_mode)
    with JobAgentClient.connect(token=admin_token(default_agent)) as client:
        assert "hello" in [job.name for job in client.list_jobs()]


def test_a_user_outside_the_group_cannot_open_the_socket(
    default_agent: AgentProcess, stranger: Stranger
) -> None:
    refused = stranger.call(DEFAULT_LISTEN)
    assert refused.returncode != 0 and "permission denied" in refused.stderr, refused.stderr
    # Not even with the token: the socket's mode is checked first.
    token = ("-H", f"authorization: Bearer {admin_token(default_agent)}")
    assert "permission denied" in stranger.call(DEFAULT_LISTEN, *token).stderr


def test_a_stale_socket_is_replaced(default_agent: AgentProcess) -> None:
    token = admin_token(default_agent)
    default_agent.stop(signal.SIGKILL)
    assert stat.S_ISSOCK(DEFAULT_SOCKET.lstat().st_mode)
    default_agent.start()
    # The same token: it was made once, and is kept.
    assert admin_token(default_agent) == token
    with JobAgentClient.connect(token=token) as client:
        assert "hello" in [job.name for job in client.list_jobs()]


def test_the_socket_group_may_connect_but_needs_a_token(stranger: Stranger) -> None:
    # A directory the stranger may enter, unlike pytest's own.
    parent = Path(tempfile.mkdtemp(prefix="jobagent-access-"))
    parent.chmod(0o755)
    path = parent / "run" / "agent.sock"
    flags = ("--socket-group", stranger.name)
    agent = AgentProcess(parent / "data", RUNTIMES[0], listen=f"unix:{path}", extra_args=flags)
    STARTED.append(agent)
    try:
        (parent / "data").mkdir()
        agent.start()
        gid = grp.getgrnam(stranger.name).gr_gid
        info = path.lstat()
        assert stat.S_IMODE(info.st_mode) == 0o660 and (info.st_uid, info.st_gid) == (0, gid)
        directory = path.parent.stat()
        assert stat.S_IMODE(directory.st_mode) == 0o750 and directory.st_gid == gid
        anonymous = stranger.call(agent.target)
        assert anonymous.returncode != 0 and "Unauthenticated" in anonymous.stderr
        token = ("-H", f"authorization: Bearer {admin_token(agent)}")
        given = stranger.call(agent.target, *token)
        assert given.returncode == 0 and "jobagent.v1.JobService.ListJobs" in given.stdout
    finally:
        agent.stop()
        sweep(agent)
        shutil.rmtree(parent, ignore_errors=True)


def agent_with_a_viewer_token(tmp_path: Path) -> tuple[AgentProcess, str]:
    """A started agent on a loopback port whose tokens file has one viewer token, "ops";
    and that token."""
    token = secrets.token_urlsafe(32)
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - {{name: ops, role: viewer, token: {token}}}\n")
    agent = AgentProcess(tmp_path / "data", RUNTIMES[0], extra_args=("--tokens-file", str(tokens)))
    STARTED.append(agent)
    (tmp_path / "data").mkdir()
    agent.start()
    return agent, token


def test_tcp_with_tokens_answers_a_caller_without_one_unauthenticated(
    tmp_path: Path, stranger: Stranger
) -> None:
    agent, token = agent_with_a_viewer_token(tmp_path)
    try:
        anonymous = stranger.call(agent.target)
        assert anonymous.returncode != 0 and "Unauthenticated" in anonymous.stderr
        given = stranger.call(agent.target, "-H", f"authorization: Bearer {token}")
        assert given.returncode == 0 and "jobagent.v1.JobService.ListJobs" in given.stdout
        # With a tokens file there is no admin token besides those the file lists.
        assert not (tmp_path / "data" / "admin.token").exists()
        assert "--insecure" not in agent.log_file.read_text()
    finally:
        agent.stop()
        sweep(agent)


def test_callers_without_a_token_who_read_no_health_watch_hold_up_no_stop(
    tmp_path: Path,
) -> None:
    """Health is open to all: its watches take the anonymous caller's stream slots (a
    caller with a token, its own), and watchers whose client reads nothing delay neither a
    status change nor the agent's stop (the health library's watch held a lock while it
    sent, and SIGTERM waited on it)."""
    agent, token = agent_with_a_viewer_token(tmp_path)
    request = health_pb2.HealthCheckRequest(service="")
    try:
        assert agent.process is not None
        with SilentCaller(agent.target) as silent, grpc.insecure_channel(agent.target) as channel:
            for _ in range(DEFAULT_MAX_STREAMS_PER_CALLER - 1):
                silent.call("/grpc.health.v1.Health/Watch", request.SerializeToString())
            watch = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=60)
            statuses = iter(watch)
            assert next(statuses).status == health_pb2.HealthCheckResponse.SERVING
            # The anonymous caller's slots are all taken once the agent has the silent calls.
            for _ in range(100):
                beyond = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=10)
                try:
                    next(iter(beyond))
                except grpc.RpcError as refused:
                    assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                    break
                beyond.cancel()
                time.sleep(0.1)
            else:
                raise AssertionError("the anonymous caller's watches were never bounded")
            held = health_pb2_grpc.HealthStub(channel).Watch(
                request, timeout=60, metadata=(("authorization", f"Bearer {token}"),)
            )
            held_statuses = iter(held)
            assert next(held_statuses).status == health_pb2.HealthCheckResponse.SERVING
            agent.process.send_signal(signal.SIGTERM)
            assert next(statuses).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert next(held_statuses).status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert agent.process.wait(30) == 0
    finally:
        agent.stop()
        sweep(agent)


def test_a_socket_directory_others_may_write_is_refused_and_left_alone(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    planted = shared / "agent.sock"
    planted.write_text("not the agent's")
    refused = serve_refused(tmp_path, "--listen", f"unix:{planted}")
    assert refused.returncode == 2 and "may be written by group or others" in refused.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777
    shared.chmod(0o700)
    refused = serve_refused(tmp_path, "--listen", f"unix:{planted}")
    assert refused.returncode == 2 and "exists and is not a socket" in refused.stderr
    assert planted.read_text() == "not the agent's"


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "0.0.0.0"])
def test_tcp_without_tokens_or_client_certificates_refuses_to_start(
    tmp_path: Path, host: str
) -> None:
    refused = serve_refused(tmp_path, "--listen", f"{host}:{free_port()}")
    assert refused.returncode == 2
    assert "TCP needs authentication" in refused.stderr
    assert "--tokens-file" in refused.stderr and "--tls-client-ca" in refused.stderr
    assert not (tmp_path / "data" / "admin.token").exists()


def test_server_only_tls_beyond_loopback_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    certificates = make_certificates(tmp_path / "certs")
    tls = ("--tls-cert", str(certificates.server_cert), "--tls-key", str(certificates.server_key))
    refused = serve_refused(tmp_path, "--listen", f"0.0.0.0:{free_port()}", *tls)
    assert refused.returncode == 2 and "--tokens-file" in refused.stderr


def test_insecure_tcp_starts_and_warns_at_every_start(tmp_path: Path) -> None:
    # The harness gives --insecure to an agent on TCP without tokens.
    agent = AgentProcess(tmp_path / "data", RUNTIMES[0])
    STARTED.append(agent)
    (tmp_path / "data").mkdir()
    warning = f"serving 127.0.0.1:{agent.port} without authentication (--insecure)"
    try:
        for starts in (1, 2):
            agent.start()
            with agent.client() as client:
                assert client.list_jobs() == []
            agent.stop()
            assert agent.log_file.read_text().count(warning) == starts
    finally:
        agent.stop()
        sweep(agent)
