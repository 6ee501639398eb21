"""Roles against the real agent: viewers see env names but not values, a request_id is
the caller's own, names are whole strings; and what a local user holding a viewer token
gets over the wire."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator

import grpc
import pytest
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc
from jobagent.v1 import jobs_pb2 as pb
from jobagent_client import ClientError

from tests.e2e.conftest import start_agent_with_tokens
from tests.e2e.harness import AgentProcess, Registry, host_user, sweep

TOKENS = {
    "viewer": "viewer-token-0123456789",
    "operator": "operator-token-0123456789",
    "operator2": "operator2-token-0123456789",
    "admin": "admin-token-0123456789",
}
JOB = (
    "version: v1\ndeployment: roles\nservices:\n  vault:\n    rtype: job\n"
    "    image: {name: busybox:latest}\n    env: {PASSWORD: hunter2}\n"
    "    dispatch: {env: [TOKEN]}\n    command: {entrypoint: [/bin/true]}\n"
)
REDACTED = "<redacted>"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Iterator[AgentProcess]:
    """An agent on a loopback port that wants a token of a role."""
    roles = {name: (name.rstrip("2"), token) for name, token in TOKENS.items()}
    agent = start_agent_with_tokens(tmp_path_factory.mktemp("roles"), registry, roles)
    with agent.client(TOKENS["admin"]) as admin:
        admin.register(JOB, replace=True)
    yield agent
    agent.stop()
    sweep(agent)


def job_as(agent: AgentProcess, role: str) -> tuple[pb.Job, pb.Job]:
    """GetJob and ListJobs' entry of the job, as `role` sees them."""
    metadata = (("authorization", f"Bearer {TOKENS[role]}"),)
    with grpc.insecure_channel(agent.target) as channel:
        stub = service_grpc.JobServiceStub(channel)
        got = stub.GetJob(service_pb.GetJobRequest(name="vault"), metadata=metadata, timeout=10)
        listed = stub.ListJobs(service_pb.ListJobsRequest(), metadata=metadata, timeout=10)
    return got, listed.jobs[0]


def test_viewers_see_env_names_and_operators_their_values(guarded: AgentProcess) -> None:
    with guarded.client(TOKENS["operator"]) as operator:
        execution = operator.trigger("vault", env={"TOKEN": "s3cret"})
        operator.wait(execution.id)
        assert operator.get_execution(execution.id).env == {"TOKEN": "s3cret"}
    for job in job_as(guarded, "viewer"):
        assert dict(job.spec.env) == {"PASSWORD": REDACTED}
        assert "hunter2" not in job.spec_yaml and "PASSWORD" in job.spec_yaml
    for job in job_as(guarded, "operator"):
        assert dict(job.spec.env) == {"PASSWORD": "hunter2"}
    with guarded.client(TOKENS["viewer"]) as viewer:
        assert viewer.get_execution(execution.id).env == {"TOKEN": REDACTED}
        assert execution.id in [run.id for run in viewer.list_executions("vault")]


def test_an_env_written_through_an_anchor_is_hidden_from_viewers_everywhere(
    guarded: AgentProcess,
) -> None:
    """The document's other fields are shown to viewers as written: an env value written
    there once, and named in the env by an alias or a merge, is hidden there too."""
    document = (
        "version: v1\ndeployment: anchors\n"
        "api: {shared: &secrets {PASSWORD: hunter2}, token: &token s3cret}\n"
        "services:\n  anchored:\n    rtype: job\n    image: {name: busybox:latest}\n"
        "    env: {<<: *secrets, TOKEN: *token}\n    command: {entrypoint: [/bin/true]}\n"
    )
    with guarded.client(TOKENS["admin"]) as admin:
        admin.register(document, replace=True)
    request = service_pb.GetJobRequest(name="anchored")
    with grpc.insecure_channel(guarded.target) as channel:
        stub = service_grpc.JobServiceStub(channel)
        seen = {
            role: stub.GetJob(
                request, metadata=(("authorization", f"Bearer {TOKENS[role]}"),), timeout=10
            )
            for role in ("operator", "viewer")
        }
    assert dict(seen["operator"].spec.env) == {"PASSWORD": "hunter2", "TOKEN": "s3cret"}
    job = seen["viewer"]
    assert dict(job.spec.env) == {"PASSWORD": REDACTED, "TOKEN": REDACTED}
    assert "hunter2" not in job.spec_yaml and "s3cret" not in job.spec_yaml
    assert "shared" in job.spec_yaml and "PASSWORD" in job.spec_yaml


def test_a_request_id_is_the_callers_own(guarded: AgentProcess) -> None:
    with guarded.client(TOKENS["operator"]) as first:
        mine = first.trigger("vault", request_id="nightly-1")
        assert first.trigger("vault", request_id="nightly-1").id == mine.id
    with guarded.client(TOKENS["operator2"]) as second:
        theirs = second.trigger("vault", request_id="nightly-1")
        assert theirs.id != mine.id
        assert second.trigger("vault", request_id="nightly-1").id == theirs.id


def test_names_with_a_trailing_newline_are_invalid(guarded: AgentProcess) -> None:
    with guarded.client(TOKENS["admin"]) as admin:
        execution = admin.trigger("vault")
        calls = (
            lambda: admin.get_job("vault\n"),
            lambda: admin.trigger("vault\n"),
            lambda: admin.get_execution(execution.id + "\n"),
            lambda: admin.register(JOB.replace("  vault:", '  "vault\\n":'), replace=True),
        )
        for call in calls:
            with pytest.raises(ClientError) as caught:
                call()
            assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ClientError) as caught:
            admin.register(JOB.replace("    env:", "    labels: {run.oci.hooks: x}\n    env:"))
        assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.field == "services.vault.labels.run.oci.hooks"


@pytest.fixture
def local_user() -> Iterator[str]:
    """An unprivileged host user, removed afterwards."""
    with host_user("roles") as name:
        yield name


def grpc_as(user: str, agent: AgentProcess, method: str, request: bytes, token: str) -> bytes:
    """A unary call made by `user` with curl over HTTP/2: the response headers and body."""
    frame = b"\0" + len(request).to_bytes(4, "big") + request
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as body:
        body.write(frame)
        body.flush()
        os.chmod(body.name, 0o644)
        headers = ["-H", "content-type: application/grpc", "-H", "te: trailers"]
        if token:
            headers += ["-H", f"authorization: Bearer {token}"]
        url = f"http://{agent.target}/jobagent.v1.JobService/{method}"
        argv = ["curl", "-s", "--http2-prior-knowledge", *headers]
        argv += ["--data-binary", f"@{body.name}", "-D", "-", "-o", "-", url]
        done = subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_local_user_with_a_viewer_token_learns_no_secret_and_triggers_nothing(
    guarded: AgentProcess, local_user: str
) -> None:
    get_job = service_pb.GetJobRequest(name="vault").SerializeToString()
    seen = grpc_as(local_user, guarded, "GetJob", get_job, TOKENS["viewer"])
    assert b"PASSWORD" in seen and REDACTED.encode() in seen
    assert b"hunter2" not in seen
    with guarded.client(TOKENS["operator"]) as operator:
        before = len(operator.list_executions("vault"))
    trigger = service_pb.TriggerJobRequest(job_name="vault").SerializeToString()
    assert b"grpc-status: 7" in grpc_as(
        local_user, guarded, "TriggerJob", trigger, TOKENS["viewer"]
    )
    assert b"grpc-status: 16" in grpc_as(local_user, guarded, "TriggerJob", trigger, "")
    with guarded.client(TOKENS["operator"]) as operator:
        assert len(operator.list_executions("vault")) == before
