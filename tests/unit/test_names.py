"""Every name the agent accepts matches its pattern as a whole string (a trailing newline
included), and labels stay out of the prefixes the runtime interprets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.dispatch import check_dispatch_policy
from agent.domain import DispatchPolicy, ImageSpec, JobSpec, Mount, MountKind
from agent.errors import InvalidSpec
from agent.mounts import check_mounts
from agent.spec import parse_document, validate_job_spec

VALID = JobSpec(name="ok", image=ImageSpec("busybox"))


def document(service: str, name: str = "backup", deployment: str = "ops") -> str:
    return (
        f'version: v1\ndeployment: "{deployment}"\nservices:\n  "{name}":\n'
        f"    rtype: job\n    image: {{name: busybox}}\n{service}"
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (document("", name="backup\\n"), "services.backup\n"),
        (document("", deployment="ops\\n"), "deployment"),
        (document('    env: {"A\\n": x}\n'), "services.backup.env.A\n"),
        (document('    labels: {"team\\n": x}\n'), "services.backup.labels.team\n"),
        (
            document('    storage: [{type: named, name: "v\\n", target: /v}]\n'),
            "services.backup.storage[0].name",
        ),
        (document('    user: "app\\n"\n'), "services.backup.user"),
        (document('    resources: {memory: "64Mi\\n1"}\n'), "services.backup.resources.memory"),
    ],
)
def test_a_trailing_newline_is_not_part_of_any_yaml_name(text: str, field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_document(text)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (replace(VALID, name="ok\n"), "spec.name"),
        (replace(VALID, deployment="ops\n"), "spec.deployment"),
        (replace(VALID, env={"A\n": "x"}), "spec.env.A\n"),
        (replace(VALID, labels={"team\n": "x"}), "spec.labels.team\n"),
        (
            replace(VALID, storage=(Mount(MountKind.NAMED, "/v", source="v\n"),)),
            "spec.storage[0].source",
        ),
    ],
)
def test_a_trailing_newline_is_not_part_of_any_structured_name(spec: JobSpec, field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        validate_job_spec(spec)
    assert caught.value.field == field


def test_a_trailing_newline_is_not_part_of_a_dispatch_env_name() -> None:
    with pytest.raises(InvalidSpec) as caught:
        check_dispatch_policy(DispatchPolicy(env=("REGION\n",)), "spec.dispatch")
    assert caught.value.field == "spec.dispatch.env[0]"


def test_a_volume_name_with_a_newline_is_refused() -> None:
    with pytest.raises(InvalidSpec):
        check_mounts((Mount(MountKind.NAMED, "/v", source="v\n"),), "spec.storage")


@pytest.mark.parametrize(
    "key", ["org.opencontainers.image.stopSignal", "run.oci.hooks", "io.kubernetes.cri.x"]
)
def test_labels_under_runtime_prefixes_are_refused_naming_the_field(key: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        validate_job_spec(replace(VALID, labels={key: "x"}))
    assert caught.value.field == f"spec.labels.{key}"
    assert "reserved" in caught.value.reason
    with pytest.raises(InvalidSpec) as caught:
        parse_document(document(f"    labels: {{{key}: x}}\n"))
    assert caught.value.field == f"services.backup.labels.{key}"


def test_ordinary_labels_pass() -> None:
    validate_job_spec(replace(VALID, labels={"team": "ops", "example.com/tier": "batch"}))
