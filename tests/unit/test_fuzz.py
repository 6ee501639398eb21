"""Generated specs and requests against the real gRPC server (with a fake runtime): every
answer is OK or a deliberate error code, never INTERNAL or UNKNOWN, and the server lives."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import descriptor, message, message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobagent.v1 import job_service_pb2 as service_pb

from agent.spec import JOB_FIELDS
from tests.unit.live_server import live_server

SERVICE = service_pb.DESCRIPTOR.services_by_name["JobService"]
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
EXAMPLES = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real AgentServer on 127.0.0.1 in a thread of its own, over a fake runtime."""
    with live_server(tmp_path_factory.mktemp("fuzz")) as target:
        yield target


SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            [
                "",
                "a",
                "backup",
                "../x",
                "0" * 32,
                "*/5 * * * *",
                "busybox:latest",
                "SIGTERM",
                "Europe/Berlin",
                "No/Such",
                "--help",
                "/a/../..",
            ]
        ),
    ),
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=64),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=True, allow_infinity=True),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
    FieldDescriptor.TYPE_INT32: st.integers(-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 2**64 - 1),
    FieldDescriptor.TYPE_ENUM: st.integers(-2, 20),  # known values and unknown ones
}


def message_class(kind: descriptor.Descriptor) -> Any:
    return message_factory.GetMessageClass(kind)


def messages(kind: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Messages of `kind` with any subset of fields set to any value of their type."""
    if kind.full_name == "google.protobuf.Duration":
        seconds, nanos = st.integers(-(10**12), 10**12), st.integers(-999_999_999, 999_999_999)
        return st.builds(lambda s, n: message_class(kind)(seconds=s, nanos=n), seconds, nanos)
    if kind.full_name == "google.protobuf.Timestamp":
        return st.builds(
            lambda seconds: message_class(kind)(seconds=seconds),
            st.integers(-62135596800, 253402300799),
        )
    fields = {}
    for field in kind.fields:
        if field.message_type is not None:
            if depth > 3:
                continue
            value: st.SearchStrategy[Any] = messages(field.message_type, depth + 1)
        else:
            value = SCALARS[field.type]
        if field.is_repeated:
            value = st.lists(value, max_size=3)
        fields[field.name] = value
    return st.fixed_dictionaries({}, optional=fields).map(lambda values: build(kind, values))


def build(kind: descriptor.Descriptor, values: dict[str, Any]) -> Any:
    instance = message_class(kind)()
    for name, value in values.items():
        field = kind.fields_by_name[name]
        target = getattr(instance, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for entry in value:
                key = entry.key
                if field.message_type.fields_by_name["value"].message_type is not None:
                    target[key].CopyFrom(entry.value)
                else:
                    target[key] = entry.value
        elif field.is_repeated:
            target.extend(value)
        elif field.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(instance, name, value)
    return instance


def call(target: str, method: str, request: message.Message) -> grpc.StatusCode:
    """Calls one method; for a stream, reads what arrives in a moment. The status code."""
    spec = SERVICE.methods_by_name[method]
    output = message_class(spec.output_type)
    path = f"/{SERVICE.full_name}/{method}"
    codec = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": output.FromString,
    }
    with grpc.insecure_channel(target) as channel:
        try:
            if spec.server_streaming:
                for _ in channel.unary_stream(path, **codec)(request, timeout=0.3):
                    pass
            else:
                channel.unary_unary(path, **codec)(request, timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def check(target: str, method: str, request: message.Message) -> None:
    code = call(target, method, request)
    assert code not in FORBIDDEN, f"{method}({request}) answered {code}"
    if method == "RegisterJob":
        # Whatever was registered, the node still lists its jobs.
        listed = call(target, "ListJobs", service_pb.ListJobsRequest())
        assert listed == grpc.StatusCode.OK, f"ListJobs after {request} answered {listed}"


@pytest.mark.parametrize("method", sorted(SERVICE.methods_by_name))
def test_generated_requests_never_answer_internal_or_unknown(target: str, method: str) -> None:
    @EXAMPLES
    @given(messages(SERVICE.methods_by_name[method].input_type))
    def run(request: message.Message) -> None:
        check(target, method, request)

    run()
    assert alive(target)


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3)
    ),
    max_leaves=8,
)
SERVICES = st.fixed_dictionaries(
    {
        "rtype": st.sampled_from(["job", "cron", "service", "batch"]),
        "image": st.one_of(
            st.fixed_dictionaries({"name": st.sampled_from(["busybox", "", "a b"])}), YAML_VALUES
        ),
    },
    optional={key: YAML_VALUES for key in sorted(JOB_FIELDS - {"rtype", "image"})},
)
DOCUMENTS = st.fixed_dictionaries(
    {
        "version": st.sampled_from(["v1", "v2", 1]),
        "deployment": st.sampled_from(["fuzz", "", "Bad Name"]),
        "services": st.dictionaries(
            st.sampled_from(["fuzzed", "x", "UPPER", ""]), SERVICES, max_size=2
        ),
    },
)


@EXAMPLES
@given(
    document=st.one_of(DOCUMENTS.map(yaml.safe_dump), st.text(max_size=200)), replace=st.booleans()
)
def test_generated_deployment_documents_are_registered_or_refused_cleanly(
    target: str, document: str, replace: bool
) -> None:
    check(target, "RegisterJob", service_pb.RegisterJobRequest(spec_yaml=document, replace=replace))


def alive(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)
