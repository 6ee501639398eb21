"""One schema: the domain JobSpec's declaration is the source; the proto message, the YAML
parser and the stored record each carry every field of it.

Adding a field to JobSpec (or to a dataclass it holds) fails here until FULL_SPEC sets it,
the proto and the YAML parser have it (or NAMES says why not) and every conversion carries it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from google.protobuf.descriptor import Descriptor
from jobagent.v1 import jobs_pb2 as pb

from agent.api.convert import job_spec_from_proto, job_spec_to_proto
from agent.dispatch import DISPATCH_FIELDS
from agent.domain import (
    CommandSpec,
    ConcurrencyPolicy,
    CronPolicy,
    DispatchPolicy,
    HostPolicy,
    ImageSpec,
    InitAction,
    InitFailurePolicy,
    InitStep,
    JobKind,
    JobSpec,
    Mount,
    MountKind,
    PayloadRequirement,
    PullPolicy,
    Resources,
    RetryPolicy,
    StepFailure,
    UserNamespace,
)
from agent.mounts import MOUNT_FIELDS
from agent.spec import (
    COMMAND_FIELDS,
    IMAGE_FIELDS,
    JOB_FIELDS,
    PROTO_FIELDS,
    RESOURCE_FIELDS,
    RETRY_POLICY_FIELDS,
    STEP_FIELDS,
    YAML_FIELDS,
    parse_document,
    validate_job_spec,
)
from agent.store import read_spec, write_spec

# A field's name in the proto JobSpec and in a YAML service, where either differs from the
# domain's dotted path; a field of a nested dataclass is otherwise named as its parent is,
# then its own name. None: the format has no such field; the comment says why.
NAMES: dict[str, tuple[str | None, str | None]] = {
    # YAML: a service's name is its key in `services`, the deployment the document's.
    "name": ("name", None),
    "deployment": ("deployment", None),
    "kind": ("kind", "rtype"),
    "timeout_seconds": ("timeout", "timeout"),
    "stop_grace_seconds": ("stop_grace_period", "stop_grace_period"),
    "max_log_bytes": ("max_log_bytes", "max_log_size"),
    "resources.memory_bytes": ("resources.memory_bytes", "resources.memory"),
    # Init steps and their failure policy are YAML only: the proto has no init yet.
    "init_steps": (None, "init.steps"),
    "init_steps.action": (None, "init.steps.uses"),
    "init_steps.params": (None, "init.steps.with"),
    "init_steps.timeout_seconds": (None, "init.steps.timeout"),
    "on_init_failure": (None, "errors.on_init_failure.action"),
    # YAML: backoff_limit is a key of the service, as in a Kubernetes Job.
    "retry": ("retry_policy", "retry_policy"),
    "retry.backoff_limit": ("retry_policy.backoff_limit", "backoff_limit"),
    "retry.initial_delay_seconds": ("retry_policy.initial_delay", "retry_policy.initial_delay"),
    "retry.max_delay_seconds": ("retry_policy.max_delay", "retry_policy.max_delay"),
    # A mount's kind is its type (and a named volume's source its name: YAML_ONLY).
    "storage.kind": ("storage.type", "storage.type"),
    "storage.size_bytes": ("storage.size_bytes", "storage.size"),
    # YAML: cron settings are keys of the service itself, as in the seed's format.
    "cron": ("cron_policy", None),
    "cron.successful_history_limit": (
        "cron_policy.successful_jobs_history_limit",
        "successful_jobs_history_limit",
    ),
    "cron.failed_history_limit": (
        "cron_policy.failed_jobs_history_limit",
        "failed_jobs_history_limit",
    ),
    **{
        f"cron.{name}": (f"cron_policy.{name}", name)
        for name in ("time_zone", "concurrency_policy", "starting_deadline_seconds", "suspend")
    },
    "dispatch": ("dispatch_policy", "dispatch"),
}


def names_of(path: str) -> tuple[str | None, str | None]:
    """A domain field's names in the proto and in YAML (see NAMES)."""
    if path in NAMES:
        return NAMES[path]
    parent, _, name = path.rpartition(".")
    if not parent:
        return path, path
    in_proto, in_yaml = names_of(parent)
    return (
        None if in_proto is None else f"{in_proto}.{name}",
        None if in_yaml is None else f"{in_yaml}.{name}",
    )


# The keys a service's YAML accepts, by the path of their mapping.
YAML_KEYS: dict[str, set[str]] = {
    "": JOB_FIELDS,
    "image": IMAGE_FIELDS,
    "command": COMMAND_FIELDS,
    "resources": RESOURCE_FIELDS,
    "retry_policy": RETRY_POLICY_FIELDS,
    "init": {"steps"},
    "init.steps": STEP_FIELDS,
    "errors": {"on_init_failure", "on_panic"},
    "errors.on_init_failure": {"action"},
    "storage": set().union(*MOUNT_FIELDS.values()),
    "dispatch": DISPATCH_FIELDS,
}
# YAML keys accepted that hold no field of a job: each is refused when set, or has one value.
YAML_ONLY = {"resources.gpu", "errors.on_panic", "storage.tier", "storage.name"}

FULL_YAML = """\
version: v1
deployment: full
services:
  everything:
    rtype: cron
    schedule: '*/5 * * * *'
    image: {name: 'busybox:1.36', pull_policy: always}
    command: {entrypoint: [/bin/sh, -c], args: [echo hi], workdir: /srv}
    env: {MODE: full}
    resources: {cpu: 1.5, memory: 64Mi, pids_limit: 32}
    user: '1000:1000'
    labels: {team: core}
    timeout: 90s
    stop_signal: INT
    stop_grace_period: 4s
    init:
      steps:
        - {id: port, uses: init.wait_tcp, with: {host: db, port: 5432, timeout: 5s},
           retry: 2, timeout: 10s, on_failure: warn}
    errors: {on_init_failure: {action: restart}}
    max_concurrent: 3
    backoff_limit: 2
    retry_policy: {initial_delay: 2s, max_delay: 8s, fail_exit_codes: [9],
                   retry_exit_codes: [3]}
    max_log_size: 4Ki
    storage:
      - {type: named, name: cache, target: /cache, readonly: true, size: 8Mi}
      - {type: tmpfs, target: /scratch, mode: 448}
    host_network: true
    privileged: true
    capabilities: [CAP_NET_ADMIN]
    user_namespace: host
    time_zone: Europe/Berlin
    concurrency_policy: forbid
    starting_deadline_seconds: 30
    suspend: true
    successful_jobs_history_limit: 7
    failed_jobs_history_limit: 4
    dispatch: {payload: required, payload_path: /in/payload, env: [A], required_env: [B],
               args: true}
"""
FULL_SPEC = JobSpec(
    name="everything",
    deployment="full",
    kind=JobKind.CRON,
    schedule="*/5 * * * *",
    image=ImageSpec("busybox:1.36", PullPolicy.ALWAYS),
    command=CommandSpec(("/bin/sh", "-c"), ("echo hi",), "/srv"),
    env={"MODE": "full"},
    resources=Resources(cpu=1.5, memory_bytes=64 * 1024**2, pids_limit=32),
    user="1000:1000",
    labels={"team": "core"},
    timeout_seconds=90.0,
    stop_signal="SIGINT",
    stop_grace_seconds=4.0,
    init_steps=(
        InitStep(
            id="port",
            action=InitAction.WAIT_TCP,
            params={"timeout": 5.0, "host": "db", "port": 5432},
            retry=2,
            timeout_seconds=10.0,
            on_failure=StepFailure.WARN,
        ),
    ),
    on_init_failure=InitFailurePolicy.RESTART,
    max_concurrent=3,
    retry=RetryPolicy(2, 2.0, 8.0, (9,), (3,)),
    max_log_bytes=4096,
    storage=(
        Mount(MountKind.NAMED, "/cache", "cache", readonly=True, size_bytes=8 * 1024**2),
        Mount(MountKind.TMPFS, "/scratch", mode=448),
    ),
    host_network=True,
    privileged=True,
    capabilities=("CAP_NET_ADMIN",),
    user_namespace=UserNamespace.HOST,
    cron=CronPolicy(
        time_zone="Europe/Berlin",
        concurrency_policy=ConcurrencyPolicy.FORBID,
        starting_deadline_seconds=30.0,
        suspend=True,
        successful_history_limit=7,
        failed_history_limit=4,
    ),
    dispatch=DispatchPolicy(PayloadRequirement.REQUIRED, "/in/payload", ("A",), ("B",), True),
)
POLICY = HostPolicy(
    allow_host_network=True,
    allow_privileged=True,
    allow_host_userns=True,
    allowed_capabilities=frozenset({"CAP_NET_ADMIN"}),
)


def declared(cls: type[Any], prefix: str = "") -> Iterator[tuple[str, type[Any] | None]]:
    """Each field of a dataclass by dotted path, into the dataclasses it holds (one, or a
    tuple of them), with the class of a field that is itself a dataclass."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        path, hint = f"{prefix}{field.name}", hints[field.name]
        args = typing.get_args(hint)
        inner: Any = args[0] if typing.get_origin(hint) is tuple else hint
        nested: type[Any] | None = inner if isinstance(inner, type) else None
        if nested is not None and not dataclasses.is_dataclass(nested):
            nested = None
        yield path, nested
        if nested is not None:
            yield from declared(nested, f"{path}.")


def values_at(value: Any, path: str) -> list[Any]:
    """The values at a dotted path, through tuples (every element's)."""
    values = [value]
    for name in path.split("."):
        values = [getattr(item, name) for item in values]
        values = [e for item in values for e in (item if isinstance(item, tuple) else [item])]
    return values


def proto_fields(message: Descriptor, prefix: str = "") -> Iterator[str]:
    """Each field of a message by dotted path, into its own messages (not the well-known
    types such as Duration, which are values)."""
    for field in message.fields:
        yield f"{prefix}{field.name}"
        nested = field.message_type
        if nested is None or nested.full_name.startswith("google.protobuf."):
            continue
        if not nested.GetOptions().map_entry:
            yield from proto_fields(nested, f"{prefix}{field.name}.")


def test_full_spec_sets_every_declared_field_to_other_than_its_default() -> None:
    unset = []
    for path, _ in declared(JobSpec):
        parent, _, name = path.rpartition(".")
        owners = values_at(FULL_SPEC, parent) if parent else [FULL_SPEC]
        field = next(f for f in dataclasses.fields(owners[0]) if f.name == name)
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            continue
        if all(getattr(owner, name) == default for owner in owners):
            unset.append(path)
    assert unset == [], f"FULL_SPEC leaves {unset} at the default: set them"


def test_every_field_is_named_in_the_proto_and_the_yaml_and_back() -> None:
    proto = set(proto_fields(pb.JobSpec.DESCRIPTOR))
    yaml = {
        f"{parent}.{key}" if parent else key for parent, keys in YAML_KEYS.items() for key in keys
    }
    named_proto, named_yaml, missing = set(), set(), []
    for path, nested in declared(JobSpec):
        in_proto, in_yaml = names_of(path)
        if in_proto is not None:
            named_proto.add(in_proto)
            if in_proto not in proto:
                missing.append(f"{path}: proto {in_proto}")
        if in_yaml is not None:
            named_yaml.add(in_yaml)
            # A mapping of its own: the dataclass's fields are checked one by one.
            if nested is None and in_yaml not in yaml:
                missing.append(f"{path}: YAML {in_yaml}")
    assert missing == [], f"fields missing from a format (or from NAMES): {missing}"
    assert proto - named_proto == set(), "proto fields that no domain field declares"
    containers = {name.rpartition(".")[0] for name in yaml} | {"init", "errors"}
    unclaimed = yaml - named_yaml - containers - YAML_ONLY
    assert unclaimed == set(), "YAML keys that no domain field declares"


def test_the_stored_record_has_every_field_by_name() -> None:
    record = json.loads(write_spec(FULL_SPEC))["spec"]
    missing = []
    for path, _ in declared(JobSpec):
        values = [record]
        for name in path.split("."):
            values = [v for item in values for v in _listed(item)]
            values = [item[name] for item in values if name in item]
        if not values:
            missing.append(path)
    assert missing == []


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_every_format_carries_every_field() -> None:
    assert parse_document(FULL_YAML, POLICY) == [FULL_SPEC]
    validate_job_spec(FULL_SPEC, POLICY)
    assert read_spec(write_spec(FULL_SPEC)) == FULL_SPEC
    # The proto has no init steps (see NAMES).
    yaml_only = replace(FULL_SPEC, init_steps=(), on_init_failure=InitFailurePolicy.FAIL)
    assert job_spec_from_proto(job_spec_to_proto(FULL_SPEC)) == yaml_only


def test_the_validators_field_names_agree_with_names() -> None:
    for index, table in enumerate((PROTO_FIELDS, YAML_FIELDS)):
        for path, name in table.items():
            expected = names_of(path)[index]
            # The validator names a mount's field relative to the mount, and "" is the
            # service's own key.
            if path.startswith("storage.") and expected is not None:
                expected = expected.rpartition(".")[2]
            assert (expected or "") == name, path
