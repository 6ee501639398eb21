"""One validator: every value rule refuses a spec alike, as YAML or as a structured message.

Each case is one mistake written both ways; RegisterJob on a real server answers both with
INVALID_ARGUMENT and a BadRequest naming the field as that caller wrote it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import job_service_pb2_grpc as service_grpc

from agent.domain import HostPolicy
from tests.unit.live_server import live_server

CRON = {"kind": "JOB_KIND_CRON", "schedule": "* * * * *"}
TMPFS = {"type": "MOUNT_TYPE_TMPFS", "target": "/scratch"}
# (YAML lines of service `once`, the structured spec's fields, YAML field, structured field)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "rtype: cron\nschedule: '* * * * *'\ntime_zone: No/Such",
        {**CRON, "cron_policy": {"time_zone": "No/Such"}},
        "time_zone",
        "cron_policy.time_zone",
    ),
    (
        "rtype: cron\nschedule: every tuesday",
        {**CRON, "schedule": "every tuesday"},
        "schedule",
        "schedule",
    ),
    ("rtype: cron", {"kind": "JOB_KIND_CRON"}, "schedule", "schedule"),
    ("rtype: job\nschedule: '* * * * *'", {"schedule": "* * * * *"}, "schedule", "schedule"),
    (
        "rtype: job\ntime_zone: Europe/Berlin",
        {"cron_policy": {"time_zone": "Europe/Berlin"}},
        "time_zone",
        "cron_policy.time_zone",
    ),
    (
        "rtype: cron\nschedule: '* * * * *'\nstarting_deadline_seconds: 0",
        {**CRON, "cron_policy": {"starting_deadline_seconds": 0}},
        "starting_deadline_seconds",
        "cron_policy.starting_deadline_seconds",
    ),
    (
        "rtype: cron\nschedule: '* * * * *'\nstarting_deadline_seconds: .inf",
        {**CRON, "cron_policy": {"starting_deadline_seconds": "Infinity"}},
        "starting_deadline_seconds",
        "cron_policy.starting_deadline_seconds",
    ),
    (
        "rtype: cron\nschedule: '* * * * *'\nstarting_deadline_seconds: .nan",
        {**CRON, "cron_policy": {"starting_deadline_seconds": "NaN"}},
        "starting_deadline_seconds",
        "cron_policy.starting_deadline_seconds",
    ),
    (
        "rtype: job\nimage: {name: '--help'}",
        {"image": {"name": "--help"}},
        "image.name",
        "image.name",
    ),
    ("rtype: job\nimage: {name: 'a b'}", {"image": {"name": "a b"}}, "image.name", "image.name"),
    (
        "rtype: job\nimage: {name: 'Team/Tool'}",
        {"image": {"name": "Team/Tool"}},
        "image.name",
        "image.name",
    ),
    (
        "rtype: job\nimage: {name: 'oci:relative/layout'}",
        {"image": {"name": "oci:relative/layout"}},
        "image.name",
        "image.name",
    ),
    (
        "rtype: job\nimage: {name: 'oci:/srv/../etc'}",
        {"image": {"name": "oci:/srv/../etc"}},
        "image.name",
        "image.name",
    ),
    (
        "rtype: job\ncommand: {workdir: tmp}",
        {"command": {"workdir": "tmp"}},
        "command.workdir",
        "command.workdir",
    ),
    (
        "rtype: job\ncommand: {workdir: /a/../..}",
        {"command": {"workdir": "/a/../.."}},
        "command.workdir",
        "command.workdir",
    ),
    (
        'rtype: job\ncommand: {args: ["a\\0b"]}',
        {"command": {"args": ["a\u0000b"]}},
        "command.args[0]",
        "command.args[0]",
    ),
    (
        "rtype: job\nstorage: [{type: tmpfs, target: /data/../..}]",
        {"storage": [{**TMPFS, "target": "/data/../.."}]},
        "storage[0].target",
        "storage[0].target",
    ),
    (
        "rtype: job\nstorage: [{type: tmpfs, target: data}]",
        {"storage": [{**TMPFS, "target": "data"}]},
        "storage[0].target",
        "storage[0].target",
    ),
    (
        "rtype: job\nstorage: [{type: tmpfs, target: /}]",
        {"storage": [{**TMPFS, "target": "/"}]},
        "storage[0].target",
        "storage[0].target",
    ),
    (
        "rtype: job\nstorage: [{type: tmpfs, target: /a}, {type: tmpfs, target: /a}]",
        {"storage": [{**TMPFS, "target": "/a"}, {**TMPFS, "target": "/a"}]},
        "storage[1].target",
        "storage[1].target",
    ),
    (
        "rtype: job\nstorage: [{type: bind, source: /srv/../etc, target: /x}]",
        {"storage": [{"type": "MOUNT_TYPE_BIND", "source": "/srv/../etc", "target": "/x"}]},
        "storage[0].source",
        "storage[0].source",
    ),
    (
        "rtype: job\nstorage: [{type: bind, source: /etc, target: /x}]",
        {"storage": [{"type": "MOUNT_TYPE_BIND", "source": "/etc", "target": "/x"}]},
        "storage[0].source",
        "storage[0].source",
    ),
    (
        "rtype: job\nstorage: [{type: tmpfs, target: /x, size: 1Ki}]",
        {"storage": [{**TMPFS, "sizeBytes": "1024"}]},
        "storage[0].size",
        "storage[0].size_bytes",
    ),
    (
        "rtype: job\nstorage: [{type: tmpfs, target: /x, mode: 65536}]",
        {"storage": [{**TMPFS, "mode": 65536}]},
        "storage[0].mode",
        "storage[0].mode",
    ),
    (
        "rtype: job\ndispatch: {payload_path: ../../etc/passwd}",
        {"dispatch_policy": {"payload_path": "../../etc/passwd"}},
        "dispatch.payload_path",
        "dispatch_policy.payload_path",
    ),
    (
        "rtype: job\ndispatch: {payload_path: /run/../x}",
        {"dispatch_policy": {"payload_path": "/run/../x"}},
        "dispatch.payload_path",
        "dispatch_policy.payload_path",
    ),
    (
        "rtype: job\ndispatch: {env: [1BAD]}",
        {"dispatch_policy": {"env": ["1BAD"]}},
        "dispatch.env[0]",
        "dispatch_policy.env[0]",
    ),
    ("rtype: job\ntimeout: 0", {"timeout": "0s"}, "timeout", "timeout"),
    ("rtype: job\ntimeout: -5", {"timeout": "-5s"}, "timeout", "timeout"),
    (
        "rtype: job\nstop_grace_period: 2h",
        {"stop_grace_period": "7200s"},
        "stop_grace_period",
        "stop_grace_period",
    ),
    (
        "rtype: job\nstop_grace_period: -1",
        {"stop_grace_period": "-1s"},
        "stop_grace_period",
        "stop_grace_period",
    ),
    (
        "rtype: job\nretry_policy: {initial_delay: -1}",
        {"retry_policy": {"initial_delay": "-1s"}},
        "retry_policy.initial_delay",
        "retry_policy.initial_delay",
    ),
    (
        "rtype: job\nretry_policy: {max_delay: -1}",
        {"retry_policy": {"max_delay": "-1s"}},
        "retry_policy.max_delay",
        "retry_policy.max_delay",
    ),
    (
        "rtype: job\nretry_policy: {fail_exit_codes: [0]}",
        {"retry_policy": {"fail_exit_codes": [0]}},
        "retry_policy.fail_exit_codes",
        "retry_policy.fail_exit_codes",
    ),
    (
        "rtype: job\nretry_policy: {retry_exit_codes: [256]}",
        {"retry_policy": {"retry_exit_codes": [256]}},
        "retry_policy.retry_exit_codes",
        "retry_policy.retry_exit_codes",
    ),
    (
        "rtype: job\nresources: {cpu: 0}",
        {"resources": {"cpu": 0}},
        "resources.cpu",
        "resources.cpu",
    ),
    (
        "rtype: job\nresources: {cpu: .nan}",
        {"resources": {"cpu": "NaN"}},
        "resources.cpu",
        "resources.cpu",
    ),
    (
        "rtype: job\nresources: {cpu: .inf}",
        {"resources": {"cpu": "Infinity"}},
        "resources.cpu",
        "resources.cpu",
    ),
    (
        "rtype: job\nresources: {memory: 1Ki}",
        {"resources": {"memory_bytes": "1024"}},
        "resources.memory",
        "resources.memory_bytes",
    ),
    (
        "rtype: job\nresources: {pids_limit: -1}",
        {"resources": {"pids_limit": "-1"}},
        "resources.pids_limit",
        "resources.pids_limit",
    ),
    ("rtype: job\nmax_log_size: 10", {"max_log_bytes": "10"}, "max_log_size", "max_log_bytes"),
    ("rtype: job\nmax_concurrent: 0", {"max_concurrent": 0}, "max_concurrent", "max_concurrent"),
    ("rtype: job\nenv: {1BAD: x}", {"env": {"1BAD": "x"}}, "env.1BAD", "env.1BAD"),
    ('rtype: job\nenv: {A: "x\\0y"}', {"env": {"A": "x\u0000y"}}, "env.A", "env.A"),
    ("rtype: job\nuser: 'a b'", {"user": "a b"}, "user", "user"),
    ("rtype: job\nstop_signal: SIGNOPE", {"stop_signal": "SIGNOPE"}, "stop_signal", "stop_signal"),
    ("rtype: job\nhost_network: true", {"host_network": True}, "host_network", "host_network"),
    ("rtype: job\nprivileged: true", {"privileged": True}, "privileged", "privileged"),
    (
        "rtype: job\ncapabilities: [SYS_ADMIN]",
        {"capabilities": ["SYS_ADMIN"]},
        "capabilities[0]",
        "capabilities[0]",
    ),
]


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[service_grpc.JobServiceStub]:
    allowed = tmp_path_factory.mktemp("allowed")
    policy = HostPolicy(bind_allowlist=(str(allowed),))
    with (
        live_server(tmp_path_factory.mktemp("parity"), policy) as target,
        grpc.insecure_channel(target) as channel,
    ):
        yield service_grpc.JobServiceStub(channel)


def refusal(stub: service_grpc.JobServiceStub, request: service_pb.RegisterJobRequest) -> str:
    """The field that INVALID_ARGUMENT names for a refused registration."""
    with pytest.raises(grpc.RpcError) as caught:
        stub.RegisterJob(request, timeout=10)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return str(bad.field_violations[0].field)
    raise AssertionError("no BadRequest detail")


def yaml_document(lines: str) -> str:
    body = lines if "image:" in lines else f"{lines}\nimage: {{name: busybox:latest}}"
    indented = "\n".join("    " + line for line in body.splitlines())
    return f"version: v1\ndeployment: parity\nservices:\n  once:\n{indented}\n"


@pytest.mark.parametrize(("lines", "fields", "yaml_field", "proto_field"), CASES)
def test_a_mistake_is_refused_alike_as_yaml_and_as_a_structured_spec(
    stub: service_grpc.JobServiceStub,
    lines: str,
    fields: dict[str, Any],
    yaml_field: str,
    proto_field: str,
) -> None:
    from_yaml = service_pb.RegisterJobRequest(spec_yaml=yaml_document(lines))
    assert refusal(stub, from_yaml) == f"services.once.{yaml_field}"
    spec = {"name": "once", "image": {"name": "busybox:latest"}, **fields}
    structured = json_format.ParseDict({"spec": spec}, service_pb.RegisterJobRequest())
    assert refusal(stub, structured) == f"spec.{proto_field}"


def test_nothing_refused_was_stored(stub: service_grpc.JobServiceStub) -> None:
    assert list(stub.ListJobs(service_pb.ListJobsRequest(), timeout=10).jobs) == []


@pytest.mark.parametrize(
    "image",
    [
        "busybox",
        "busybox:1.36",
        "library/busybox:latest",
        "127.0.0.1:5000/team/tool:v1",
        "registry.example/a/b@sha256:" + "0" * 64,
        "localhost/x_y.z-w:T.1",
        "oci:/srv/images/tool:latest",
        "oci:/srv/images/tool",
    ],
)
def test_image_references_of_the_distribution_grammar_are_accepted(
    stub: service_grpc.JobServiceStub, image: str
) -> None:
    spec = {"name": "good-image", "image": {"name": image}}
    request = json_format.ParseDict(
        {"spec": spec, "replace": True}, service_pb.RegisterJobRequest()
    )
    (job,) = stub.RegisterJob(request, timeout=10).jobs
    assert job.spec.image.name == image
    stub.UnregisterJob(service_pb.UnregisterJobRequest(name="good-image"), timeout=10)
