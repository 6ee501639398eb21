"""Who may call: bearer tokens with roles, TLS and mTLS, the unix socket, loopback rules."""

from __future__ import annotations

import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobagent_client import ClientError, JobAgentClient
from jobagent_client.client import tls_credentials

from tests.e2e.certs import Certificates, make_certificates
from tests.e2e.conftest import RUNTIMES, start_agent
from tests.e2e.harness import AgentProcess, Registry, free_port, sweep

TOKENS = {
    "viewer": "viewer-token-0123456789",
    "operator": "operator-token-0123456789",
    "admin": "admin-token-0123456789",
}
JOB = (
    "version: v1\ndeployment: secure\nservices:\n  secured:\n    rtype: job\n"
    "    image: {name: busybox:latest}\n"
    "    command: {entrypoint: [/bin/echo, allowed]}\n"
)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, certificates: Certificates
) -> Iterator[AgentProcess]:
    """An agent that wants a token and a client certificate, and also listens on a socket."""
    directory = tmp_path_factory.mktemp("guarded")
    tokens = directory / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        + "".join(
            f"  - {{name: {role}-caller, role: {role}, token: {token}}}\n"
            for role, token in TOKENS.items()
        )
    )
    socket = directory / "run" / "agent.sock"
    credentials = tls_credentials(
        certificates.ca, certificates.client_cert, certificates.client_key
    )
    agent = start_agent(
        directory / "data",
        RUNTIMES[0],
        registry,
        credentials=credentials,
        extra_args=(
            "--tokens-file",
            str(tokens),
            "--tls-cert",
            str(certificates.server_cert),
            "--tls-key",
            str(certificates.server_key),
            "--tls-client-ca",
            str(certificates.ca),
            "--allow-privileged",
            "--allow-capability",
            "NET_ADMIN",
            "--listen",
            f"unix:{socket}",
        ),
    )
    yield agent
    agent.stop()
    sweep(agent)


def code_of(call: object) -> grpc.StatusCode | None:
    try:
        call()  # type: ignore[operator]
    except ClientError as error:
        return error.code
    return None


def test_each_role_may_do_its_part_and_no_more(guarded: AgentProcess) -> None:
    with guarded.client(TOKENS["admin"]) as admin:
        admin.register(JOB, replace=True)
    with guarded.client(TOKENS["viewer"]) as viewer:
        assert [job.name for job in viewer.list_jobs()] == ["secured"]
        assert code_of(lambda: viewer.trigger("secured")) is grpc.StatusCode.PERMISSION_DENIED
    with guarded.client(TOKENS["operator"]) as operator:
        execution = operator.trigger("secured")
        assert operator.wait(execution.id).status == "completed"
        assert [line.message for line in operator.logs(execution.id)] == ["allowed"]
        assert code_of(lambda: operator.register(JOB, replace=True)) is (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert code_of(lambda: operator.unregister("secured")) is (
            grpc.StatusCode.PERMISSION_DENIED
        )
    with pytest.raises(ClientError) as caught, guarded.client(TOKENS["viewer"]) as viewer:
        viewer.prune_images()
    assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.reason == "PERMISSION_DENIED" and "needs role admin" in str(caught.value)


def test_no_token_or_a_wrong_one_is_unauthenticated_and_health_stays_open(
    guarded: AgentProcess,
) -> None:
    for token in (None, "not-a-known-token-at-all"):
        with guarded.client(token) as client:
            assert code_of(client.list_jobs) is grpc.StatusCode.UNAUTHENTICATED
            assert code_of(lambda c=client: list(c.watch_events(0))) is (
                grpc.StatusCode.UNAUTHENTICATED
            )
    assert guarded.credentials is not None
    with grpc.secure_channel(guarded.target, guarded.credentials) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_needs_a_client_certificate_from_the_agents_ca(
    guarded: AgentProcess, certificates: Certificates
) -> None:
    for credentials in (
        tls_credentials(certificates.ca),
        tls_credentials(certificates.ca, certificates.stranger_cert, certificates.stranger_key),
    ):
        with JobAgentClient.connect(
            guarded.target, timeout=5, credentials=credentials, token=TOKENS["admin"]
        ) as client:
            assert code_of(client.list_jobs) is grpc.StatusCode.UNAVAILABLE
    with JobAgentClient.connect(guarded.target, timeout=5, token=TOKENS["admin"]) as plain:
        assert code_of(plain.list_jobs) is grpc.StatusCode.UNAVAILABLE


def test_the_unix_socket_is_private_and_serves_the_same_api(guarded: AgentProcess) -> None:
    socket = Path(guarded.extra_args[-1].removeprefix("--listen=").removeprefix("unix:"))
    mode = socket.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    with JobAgentClient.connect(f"unix:{socket}", token=TOKENS["operator"]) as client:
        execution = client.trigger("secured")
        assert client.wait(execution.id).status == "completed"
    with JobAgentClient.connect(f"unix:{socket}") as anonymous:
        assert code_of(anonymous.list_jobs) is grpc.StatusCode.UNAUTHENTICATED


def test_plain_tcp_beyond_loopback_is_refused_without_tls_or_insecure(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--listen",
            f"0.0.0.0:{free_port()}",
            "--tokens-file",
            str(tmp_path / "tokens.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "0.0.0.0 is not loopback" in result.stderr and "--insecure" in result.stderr


def test_privileges_the_agent_allows_reach_the_container(guarded: AgentProcess) -> None:
    probe = (
        "command: {entrypoint: [/bin/sh, -c, \"grep -E '^(Seccomp|CapBnd):' /proc/self/status\"]}"
    )
    with guarded.client(TOKENS["admin"]) as client:
        client.register(
            "version: v1\ndeployment: privileges\nservices:\n"
            "  net-admin:\n    rtype: job\n    image: {name: busybox:latest}\n"
            f"    capabilities: [NET_ADMIN]\n    {probe}\n"
            "  privileged:\n    rtype: job\n    image: {name: busybox:latest}\n"
            f"    privileged: true\n    {probe}\n",
            replace=True,
        )
        with pytest.raises(ClientError) as caught:
            client.register(
                "version: v1\ndeployment: privileges-2\nservices:\n  too-much:\n"
                "    rtype: job\n    image: {name: busybox:latest}\n"
                "    capabilities: [SYS_ADMIN]\n",
                replace=True,
            )
        assert caught.value.field == "services.too-much.capabilities[0]"
        seen = {}
        for name in ("net-admin", "privileged"):
            execution = client.wait(client.trigger(name).id)
            assert execution.status == "completed", (name, execution.message)
            lines = [line.message for line in client.logs(execution.id)]
            seen[name] = dict(line.split(":\t", 1) for line in lines)
    net_admin = int(seen["net-admin"]["CapBnd"], 16)
    assert net_admin & (1 << 12) and not net_admin & (1 << 21)  # NET_ADMIN, not SYS_ADMIN
    assert seen["net-admin"]["Seccomp"] == "2"
    assert int(seen["privileged"]["CapBnd"], 16) & (1 << 21)
    assert seen["privileged"]["Seccomp"] == "0"
