"""The seed's deployment YAML: parsing and validation into JobSpecs.

A document looks like ZLayer's (version v1, deployment, services). Services with
rtype job or cron become jobs; long-running services (rtype service) are not this
agent's to run and are skipped. Every error names the field path that caused it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from croniter import croniter

from agent.containerpath import is_absolute_normalized
from agent.dispatch import ENV_NAME_PATTERN, check_dispatch_policy, parse_dispatch_policy
from agent.domain import (
    CommandSpec,
    ConcurrencyPolicy,
    CronPolicy,
    HostPolicy,
    ImageSpec,
    InitAction,
    InitFailurePolicy,
    InitStep,
    JobKind,
    JobSpec,
    PullPolicy,
    Resources,
    RetryPolicy,
    StepFailure,
)
from agent.errors import InvalidSpec
from agent.mounts import check_host_access, check_mounts, parse_storage
from agent.privileges import check_privileges, parse_capabilities, parse_user_namespace
from agent.reference import reference_problem
from agent.signals import signal_name

NAME_PATTERN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# A label becomes a container annotation: a reverse-DNS style key, as OCI annotations are.
LABEL_KEY_PATTERN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?")
# Annotation prefixes that runtimes and the agent interpret: a job's label must not set them.
RESERVED_LABEL_PREFIXES = ("org.opencontainers.", "run.oci.", "io.kubernetes.")

DOCUMENT_FIELDS = {"version", "deployment", "services", "tunnels", "api"}
# Fields of a ZLayer service that only mean something for long-running services:
# accepted so that a ZLayer file works unchanged, and without effect on a job.
SERVICE_ONLY_FIELDS = {
    "network",
    "endpoints",
    "scale",
    "depends",
    "health",
    "node_mode",
    "node_selector",
    "service_type",
    "wasm_http",
}
CRON_FIELDS = (
    "time_zone",
    "concurrency_policy",
    "starting_deadline_seconds",
    "suspend",
    "successful_jobs_history_limit",
    "failed_jobs_history_limit",
)
JOB_FIELDS = {
    "rtype",
    "schedule",
    "image",
    "command",
    "env",
    "resources",
    "user",
    "labels",
    "timeout",
    "stop_signal",
    "stop_grace_period",
    "init",
    "errors",
    "max_concurrent",
    "backoff_limit",
    "retry_policy",
    "max_log_size",
    "storage",
    "host_network",
    "dispatch",
    "privileged",
    "capabilities",
    "user_namespace",
    *CRON_FIELDS,
}
STEP_FIELDS = {"id", "uses", "with", "retry", "timeout", "on_failure"}
ACTION_PARAMS: dict[InitAction, set[str]] = {
    InitAction.WAIT_TCP: {"host", "port", "timeout"},
    InitAction.WAIT_HTTP: {"url", "expect_status", "timeout"},
    InitAction.RUN: {"command", "timeout"},
    InitAction.SLEEP: {"duration"},
}
DEFAULT_WAIT_SECONDS = 30.0
DURATION_PATTERN = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_GRACE_SECONDS = 3600.0
# Fields of the seed's format that this agent does not run yet: rejected rather than ignored.
NOT_YET_SUPPORTED_FIELDS = {
    "devices",
}
IMAGE_FIELDS = {"name", "pull_policy"}
RESOURCE_FIELDS = {"cpu", "memory", "pids_limit", "gpu"}
MEMORY_PATTERN = re.compile(r"(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|M|G|T)?")
MEMORY_UNITS = {
    None: 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
MIN_MEMORY_BYTES = 4 * 1024**2
MIN_LOG_BYTES = 1024
USER_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?")
COMMAND_FIELDS = {"entrypoint", "args", "workdir"}


def parse_document(text: str, policy: HostPolicy | None = None) -> list[JobSpec]:
    """Parses a deployment document into the jobs it declares.

    Raises InvalidSpec naming the field path of the first problem found.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidSpec("spec_yaml", f"not valid YAML: {error}") from None
    root = _mapping(document, "spec_yaml")
    _check_fields(root, DOCUMENT_FIELDS, "")
    version = _required(root, "version", "")
    if version != "v1":
        raise InvalidSpec("version", f"must be v1, got {version!r}")
    deployment = _string(_required(root, "deployment", ""), "deployment")
    if not NAME_PATTERN.fullmatch(deployment):
        raise InvalidSpec("deployment", _name_rule(deployment))
    services = _mapping(_required(root, "services", ""), "services")
    jobs = []
    for name, body in services.items():
        path = f"services.{name}"
        service = _mapping(body, path)
        rtype = service.get("rtype", "service")
        if rtype == "service":
            continue
        job = parse_service(str(name), service, deployment, path)
        validate_job_spec(job, policy, path, YAML_FIELDS)
        jobs.append(job)
    if not jobs:
        raise InvalidSpec("services", "declares no service with rtype job or cron")
    return jobs


def service_documents(text: str) -> dict[str, str]:
    """Each service's own document, by name: the document's other top-level fields and that
    one service. A job keeps (and GetJob shows) its own part, so a deployment of N services
    is stored once in all rather than N times. A document of one service is kept as it was
    written; the parts of a larger one are written anew from the parsed YAML, without its
    comments. Call it on a document that parse_document accepted.
    """
    root = yaml.safe_load(text)
    services = root["services"]
    if len(services) == 1:
        return {str(name): text for name in services}
    common = {key: value for key, value in root.items() if key != "services"}
    return {
        str(name): yaml.safe_dump(
            {**common, "services": {name: body}}, sort_keys=False, allow_unicode=True
        )
        for name, body in services.items()
    }


def parse_service(name: str, service: Mapping[str, Any], deployment: str, path: str) -> JobSpec:
    """Parses one service with rtype job or cron; `path` prefixes error fields."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidSpec(path, _name_rule(name))
    for key in service:
        if key in NOT_YET_SUPPORTED_FIELDS:
            raise InvalidSpec(f"{path}.{key}", "is not supported by this agent yet")
    _check_fields(service, JOB_FIELDS | SERVICE_ONLY_FIELDS, path)
    rtype = service.get("rtype")
    try:
        kind = JobKind(rtype)
    except ValueError:
        raise InvalidSpec(f"{path}.rtype", f"must be job or cron, got {rtype!r}") from None
    schedule = _optional_string(service, "schedule", path)
    return JobSpec(
        name=name,
        deployment=deployment,
        kind=kind,
        image=_image(_required(service, "image", path), f"{path}.image"),
        command=_command(service.get("command", {}), f"{path}.command"),
        env=_env(service.get("env", {}), f"{path}.env"),
        schedule=schedule,
        resources=_resources(service.get("resources", {}), f"{path}.resources"),
        user=_user(service.get("user"), f"{path}.user"),
        labels=_labels(service.get("labels", {}), f"{path}.labels"),
        timeout_seconds=_optional_duration(service, "timeout", path),
        stop_signal=_signal(service.get("stop_signal"), f"{path}.stop_signal"),
        stop_grace_seconds=_grace(
            _optional_duration(service, "stop_grace_period", path), f"{path}.stop_grace_period"
        ),
        init_steps=_init_steps(service.get("init"), f"{path}.init"),
        max_concurrent=_positive_int(service.get("max_concurrent"), f"{path}.max_concurrent"),
        retry=_retry(service, path),
        max_log_bytes=_optional_size(service, "max_log_size", path),
        on_init_failure=_on_init_failure(service.get("errors"), f"{path}.errors"),
        storage=parse_storage(service.get("storage"), f"{path}.storage", parse_memory),
        host_network=_flag(service.get("host_network"), f"{path}.host_network"),
        cron=_cron(service, kind, path),
        dispatch=parse_dispatch_policy(service.get("dispatch"), f"{path}.dispatch"),
        privileged=_flag(service.get("privileged"), f"{path}.privileged"),
        capabilities=parse_capabilities(service.get("capabilities"), f"{path}.capabilities"),
        user_namespace=parse_user_namespace(
            service.get("user_namespace"), f"{path}.user_namespace"
        ),
    )


def _cron(service: Mapping[str, Any], kind: JobKind, path: str) -> CronPolicy:
    """The cron settings, which only a cron job may have."""
    if kind is JobKind.JOB:
        for key in CRON_FIELDS:
            if key in service:
                raise InvalidSpec(f"{path}.{key}", "is only allowed with rtype cron")
        return CronPolicy()
    defaults = CronPolicy()
    zone = _optional_string(service, "time_zone", path) or defaults.time_zone
    policy_text = service.get("concurrency_policy", defaults.concurrency_policy.value)
    try:
        policy = ConcurrencyPolicy(policy_text)
    except ValueError:
        raise InvalidSpec(
            f"{path}.concurrency_policy", "must be allow, forbid or replace"
        ) from None
    deadline = service.get("starting_deadline_seconds")
    if deadline is not None and (
        isinstance(deadline, bool) or not isinstance(deadline, int | float) or deadline <= 0
    ):
        raise InvalidSpec(f"{path}.starting_deadline_seconds", "must be a positive number")
    limits = [
        service.get(key, default)
        for key, default in (
            ("successful_jobs_history_limit", defaults.successful_history_limit),
            ("failed_jobs_history_limit", defaults.failed_history_limit),
        )
    ]
    for key, value in zip(
        ("successful_jobs_history_limit", "failed_jobs_history_limit"), limits, strict=True
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidSpec(f"{path}.{key}", "must be a non-negative integer")
    return CronPolicy(
        time_zone=zone,
        concurrency_policy=policy,
        starting_deadline_seconds=None if deadline is None else float(deadline),
        suspend=_flag(service.get("suspend"), f"{path}.suspend"),
        successful_history_limit=limits[0],
        failed_history_limit=limits[1],
    )


def check_time_zone(zone: str, path: str) -> None:
    """An IANA time zone name (Europe/Berlin, UTC)."""
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSpec(path, f"{zone!r} is not an IANA time zone") from None


def _flag(value: Any, path: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidSpec(path, "must be true or false")
    return value


# How each format names the fields that validate_job_spec checks, where it differs from the
# domain's dotted names. A rule names a field as the caller wrote it: the proto's JobSpec
# fields (spec.cron_policy.time_zone) or the YAML service's keys (services.x.time_zone);
# "" is the prefix itself (a service's name is its key), and storage.size_bytes is relative
# to the mount (storage[0].size).
PROTO_FIELDS: Mapping[str, str] = {
    "cron.time_zone": "cron_policy.time_zone",
    "cron.starting_deadline_seconds": "cron_policy.starting_deadline_seconds",
    "cron.successful_history_limit": "cron_policy.successful_jobs_history_limit",
    "cron.failed_history_limit": "cron_policy.failed_jobs_history_limit",
    "cron.concurrency_policy": "cron_policy.concurrency_policy",
    "cron.suspend": "cron_policy.suspend",
    "timeout_seconds": "timeout",
    "stop_grace_seconds": "stop_grace_period",
    "retry.backoff_limit": "retry_policy.backoff_limit",
    "retry.initial_delay_seconds": "retry_policy.initial_delay",
    "retry.max_delay_seconds": "retry_policy.max_delay",
    "retry.fail_exit_codes": "retry_policy.fail_exit_codes",
    "retry.retry_exit_codes": "retry_policy.retry_exit_codes",
    "dispatch": "dispatch_policy",
    "storage.size_bytes": "size_bytes",
}
YAML_FIELDS: Mapping[str, str] = {
    **PROTO_FIELDS,
    "name": "",
    "kind": "rtype",
    "cron.time_zone": "time_zone",
    "cron.starting_deadline_seconds": "starting_deadline_seconds",
    "cron.successful_history_limit": "successful_jobs_history_limit",
    "cron.failed_history_limit": "failed_jobs_history_limit",
    "cron.concurrency_policy": "concurrency_policy",
    "cron.suspend": "suspend",
    "retry.backoff_limit": "backoff_limit",
    "max_log_bytes": "max_log_size",
    "resources.memory_bytes": "resources.memory",
    "dispatch": "dispatch",
    "storage.size_bytes": "size",
}


def validate_job_spec(
    spec: JobSpec,
    policy: HostPolicy | None = None,
    path: str = "spec",
    fields: Mapping[str, str] = PROTO_FIELDS,
) -> None:
    """The one check of a JobSpec's values, whichever way it came (YAML or proto).

    `path` prefixes every field path and `fields` renames the domain's fields into the
    format's (PROTO_FIELDS or YAML_FIELDS). Types and unknown fields are the parsers' job.
    """

    def at(key: str) -> str:
        name = fields.get(key, key)
        return _join(path, name) if name else path

    if not NAME_PATTERN.fullmatch(spec.name):
        raise InvalidSpec(at("name"), _name_rule(spec.name))
    if spec.deployment and not NAME_PATTERN.fullmatch(spec.deployment):
        raise InvalidSpec(at("deployment"), _name_rule(spec.deployment))
    problem = reference_problem(spec.image.name) if spec.image.name else "is required"
    if problem is not None:
        raise InvalidSpec(at("image.name"), problem)
    _check_command(spec.command, at)
    for key, value in spec.env.items():
        if not ENV_NAME_PATTERN.fullmatch(key):
            raise InvalidSpec(f"{at('env')}.{key}", "is not a valid environment variable name")
        if "\0" in value:
            raise InvalidSpec(f"{at('env')}.{key}", "may not contain NUL")
    for key in spec.labels:
        check_label_key(key, f"{at('labels')}.{key}")
    validate_schedule(spec.kind, spec.schedule, at("schedule"))
    _check_cron(spec.kind, spec.cron, at)
    _check_resources(spec.resources, at)
    if spec.user:
        _user(spec.user, at("user"))
    if spec.timeout_seconds is not None:
        check_duration(spec.timeout_seconds, at("timeout_seconds"), positive=True)
    if spec.stop_signal:
        normalize_signal(spec.stop_signal, at("stop_signal"))
    if spec.stop_grace_seconds is not None:
        check_duration(spec.stop_grace_seconds, at("stop_grace_seconds"))
    _grace(spec.stop_grace_seconds, at("stop_grace_seconds"))
    _positive_int(spec.max_concurrent, at("max_concurrent"))
    if spec.max_log_bytes is not None and spec.max_log_bytes < MIN_LOG_BYTES:
        raise InvalidSpec(at("max_log_bytes"), f"must be at least {MIN_LOG_BYTES} bytes")
    _check_retry(spec.retry, at)
    check_mounts(spec.storage, at("storage"))
    for index, mount in enumerate(spec.storage):
        if mount.size_bytes is not None and mount.size_bytes < MIN_MEMORY_BYTES:
            size = fields.get("storage.size_bytes", "size_bytes")
            raise InvalidSpec(
                f"{at('storage')}[{index}].{size}", f"must be at least {MIN_MEMORY_BYTES} bytes"
            )
    check_host_access(spec.storage, spec.host_network, policy or HostPolicy(), path)
    check_privileges(spec, policy or HostPolicy(), path)
    check_init_network(spec.init_steps, spec.host_network, at("init"))
    check_dispatch_policy(spec.dispatch, at("dispatch"))


def _check_command(command: CommandSpec, at: Callable[[str], str]) -> None:
    if command.workdir and not is_absolute_normalized(command.workdir):
        raise InvalidSpec(at("command.workdir"), "must be an absolute, normalized path")
    for key in ("entrypoint", "args"):
        for index, item in enumerate(getattr(command, key)):
            if "\0" in item:
                raise InvalidSpec(f"{at(f'command.{key}')}[{index}]", "may not contain NUL")


def _check_cron(kind: JobKind, cron: CronPolicy, at: Callable[[str], str]) -> None:
    """A cron job's policy; a job has none (every field at its default)."""
    if kind is JobKind.JOB:
        for key, value in vars(cron).items():
            if value != getattr(CronPolicy(), key):
                raise InvalidSpec(at(f"cron.{key}"), "is only allowed with rtype cron")
        return
    check_time_zone(cron.time_zone, at("cron.time_zone"))
    deadline = cron.starting_deadline_seconds
    if deadline is not None:
        check_duration(deadline, at("cron.starting_deadline_seconds"), positive=True)
    for key in ("successful_history_limit", "failed_history_limit"):
        if getattr(cron, key) < 0:
            raise InvalidSpec(at(f"cron.{key}"), "must be a non-negative integer")


def _check_resources(resources: Resources, at: Callable[[str], str]) -> None:
    cpu = resources.cpu
    if cpu is not None and (not math.isfinite(cpu) or cpu <= 0):
        raise InvalidSpec(at("resources.cpu"), "must be a positive number of cores")
    if resources.memory_bytes is not None and resources.memory_bytes < MIN_MEMORY_BYTES:
        raise InvalidSpec(
            at("resources.memory_bytes"), f"must be at least {MIN_MEMORY_BYTES} bytes"
        )
    if resources.pids_limit is not None and resources.pids_limit <= 0:
        raise InvalidSpec(at("resources.pids_limit"), "must be a positive integer")


def _check_retry(retry: RetryPolicy, at: Callable[[str], str]) -> None:
    if retry.backoff_limit < 0:
        raise InvalidSpec(at("retry.backoff_limit"), "must be a non-negative integer")
    check_duration(retry.initial_delay_seconds, at("retry.initial_delay_seconds"))
    check_duration(retry.max_delay_seconds, at("retry.max_delay_seconds"))
    for key in ("fail_exit_codes", "retry_exit_codes"):
        if not all(1 <= code <= 255 for code in getattr(retry, key)):
            raise InvalidSpec(at(f"retry.{key}"), "must be a list of exit codes (1-255)")


def check_duration(seconds: float, path: str, positive: bool = False) -> None:
    """A duration in seconds: finite and not negative (or, with `positive`, above zero)."""
    if not math.isfinite(seconds):
        raise InvalidSpec(path, "must be a finite duration")
    if seconds < 0 or (positive and seconds == 0):
        raise InvalidSpec(path, "must be positive" if positive else "must not be negative")


def validate_schedule(kind: JobKind, schedule: str, path: str) -> None:
    """A cron job needs a valid schedule (5 fields, or 6/7 with seconds first); a job none."""
    if kind is JobKind.JOB:
        if schedule:
            raise InvalidSpec(path, "a schedule is only allowed with rtype cron")
        return
    if not schedule:
        raise InvalidSpec(path, "is required with rtype cron")
    if not croniter.is_valid(schedule, second_at_beginning=True):
        raise InvalidSpec(path, f"{schedule!r} is not a cron expression")


def _image(value: Any, path: str) -> ImageSpec:
    image = _mapping(value, path)
    _check_fields(image, IMAGE_FIELDS, path)
    name = _string(_required(image, "name", path), f"{path}.name")
    policy_text = _optional_string(image, "pull_policy", path) or PullPolicy.IF_NOT_PRESENT.value
    try:
        policy = PullPolicy(policy_text)
    except ValueError:
        choices = ", ".join(p.value for p in PullPolicy)
        raise InvalidSpec(f"{path}.pull_policy", f"must be one of {choices}") from None
    return ImageSpec(name=name, pull_policy=policy)


def _resources(value: Any, path: str) -> Resources:
    resources = _mapping(value, path)
    _check_fields(resources, RESOURCE_FIELDS, path)
    if resources.get("gpu") is not None:
        raise InvalidSpec(f"{path}.gpu", "is not supported by this agent")
    cpu = resources.get("cpu")
    if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, int | float) or cpu <= 0):
        raise InvalidSpec(f"{path}.cpu", "must be a positive number of cores")
    pids = resources.get("pids_limit")
    if pids is not None and (isinstance(pids, bool) or not isinstance(pids, int) or pids <= 0):
        raise InvalidSpec(f"{path}.pids_limit", "must be a positive integer")
    memory = resources.get("memory")
    return Resources(
        cpu=None if cpu is None else float(cpu),
        memory_bytes=None if memory is None else parse_memory(memory, f"{path}.memory"),
        pids_limit=pids,
    )


def parse_memory(value: Any, path: str, minimum: int = MIN_MEMORY_BYTES) -> int:
    """Parses a size: bytes, or a number with K/M/G/T or Ki/Mi/Gi/Ti; at least `minimum`."""
    match = MEMORY_PATTERN.fullmatch(str(value).strip()) if not isinstance(value, bool) else None
    if match is None:
        raise InvalidSpec(path, f"{value!r} is not a size such as 512Mi or 1Gi")
    size = int(float(match.group(1)) * MEMORY_UNITS[match.group(2)])
    if size < minimum:
        raise InvalidSpec(path, f"must be at least {minimum} bytes")
    return size


RETRY_POLICY_FIELDS = {"initial_delay", "max_delay", "fail_exit_codes", "retry_exit_codes"}


def _retry(service: Mapping[str, Any], path: str) -> RetryPolicy:
    """backoff_limit and retry_policy (like a Kubernetes Job's backoffLimit, podFailurePolicy)."""
    limit = service.get("backoff_limit", 0)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidSpec(f"{path}.backoff_limit", "must be a non-negative integer")
    policy_path = f"{path}.retry_policy"
    policy = _mapping(service.get("retry_policy"), policy_path)
    _check_fields(policy, RETRY_POLICY_FIELDS, policy_path)
    defaults = RetryPolicy()
    initial = _optional_duration(policy, "initial_delay", policy_path)
    maximum = _optional_duration(policy, "max_delay", policy_path)
    return RetryPolicy(
        backoff_limit=limit,
        initial_delay_seconds=defaults.initial_delay_seconds if initial is None else initial,
        max_delay_seconds=defaults.max_delay_seconds if maximum is None else maximum,
        fail_exit_codes=_exit_codes(
            policy.get("fail_exit_codes"), f"{policy_path}.fail_exit_codes"
        ),
        retry_exit_codes=_exit_codes(
            policy.get("retry_exit_codes"), f"{policy_path}.retry_exit_codes"
        ),
    )


def _exit_codes(value: Any, path: str) -> tuple[int, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(code, int) and not isinstance(code, bool) and 1 <= code <= 255 for code in value
    ):
        raise InvalidSpec(path, "must be a list of exit codes (1-255)")
    return tuple(value)


def _optional_size(mapping: Mapping[str, Any], key: str, path: str) -> int | None:
    value = mapping.get(key)
    return None if value is None else parse_memory(value, _join(path, key), MIN_LOG_BYTES)


def _positive_int(value: Any, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidSpec(path, "must be a positive integer")
    return value


def _init_steps(value: Any, path: str) -> tuple[InitStep, ...]:
    init = _mapping(value, path)
    _check_fields(init, {"steps"}, path)
    steps = init.get("steps") or []
    if not isinstance(steps, list):
        raise InvalidSpec(f"{path}.steps", "must be a list")
    parsed: list[InitStep] = []
    for index, item in enumerate(steps):
        step = parse_init_step(item, f"{path}.steps[{index}]")
        if any(other.id == step.id for other in parsed):
            raise InvalidSpec(f"{path}.steps[{index}].id", f"{step.id!r} is used twice")
        parsed.append(step)
    return tuple(parsed)


def check_init_network(steps: Sequence[InitStep], host_network: bool, path: str) -> None:
    """Refuses wait_tcp and wait_http in a job without host networking: they probe from
    the job's network namespace, which then holds only loopback and reaches nothing."""
    if host_network:
        return
    for index, step in enumerate(steps):
        if step.action.probes_network:
            raise InvalidSpec(
                f"{path}.steps[{index}].uses",
                f"{step.action.value} probes from the job's network, which is loopback only "
                "without host_network: true",
            )


def parse_init_step(value: Any, path: str) -> InitStep:
    """One init step: id, uses (the action), with (its settings), retry, timeout, on_failure."""
    step = _mapping(value, path)
    _check_fields(step, STEP_FIELDS, path)
    step_id = _string(_required(step, "id", path), f"{path}.id")
    if not NAME_PATTERN.fullmatch(step_id):
        raise InvalidSpec(f"{path}.id", _name_rule(step_id))
    uses = _required(step, "uses", path)
    try:
        action = InitAction(uses)
    except ValueError:
        choices = ", ".join(action.value for action in InitAction)
        raise InvalidSpec(f"{path}.uses", f"{uses!r} is not one of {choices}") from None
    retry = step.get("retry", 0) or 0
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
        raise InvalidSpec(f"{path}.retry", "must be a non-negative integer")
    try:
        failure = StepFailure(step.get("on_failure", StepFailure.FAIL.value))
    except ValueError:
        raise InvalidSpec(f"{path}.on_failure", "must be fail, warn or continue") from None
    return InitStep(
        id=step_id,
        action=action,
        params=_action_params(action, _mapping(step.get("with"), f"{path}.with"), f"{path}.with"),
        retry=retry,
        timeout_seconds=_optional_duration(step, "timeout", path),
        on_failure=failure,
    )


def _action_params(action: InitAction, params: Mapping[str, Any], path: str) -> dict[str, Any]:
    _check_fields(params, ACTION_PARAMS[action], path)
    result: dict[str, Any] = {}
    if "timeout" in ACTION_PARAMS[action]:
        result["timeout"] = _optional_duration(params, "timeout", path) or DEFAULT_WAIT_SECONDS
    if action is InitAction.WAIT_TCP:
        result["host"] = _string(_required(params, "host", path), f"{path}.host")
        port = _required(params, "port", path)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise InvalidSpec(f"{path}.port", "must be a port number (1-65535)")
        result["port"] = port
    elif action is InitAction.WAIT_HTTP:
        url = _string(_required(params, "url", path), f"{path}.url")
        if not url.startswith(("http://", "https://")):
            raise InvalidSpec(f"{path}.url", "must be an http:// or https:// URL")
        status = params.get("expect_status", 200)
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status < 600:
            raise InvalidSpec(f"{path}.expect_status", "must be an HTTP status code")
        result.update(url=url, expect_status=status)
    elif action is InitAction.RUN:
        command = _required(params, "command", path)
        if isinstance(command, str):
            result["command"] = ["/bin/sh", "-c", command]
        else:
            result["command"] = list(_string_list(command, f"{path}.command"))
        if not result["command"]:
            raise InvalidSpec(f"{path}.command", "must not be empty")
    else:
        result["seconds"] = parse_duration(_required(params, "duration", path), f"{path}.duration")
    return result


def _on_init_failure(value: Any, path: str) -> InitFailurePolicy:
    errors = _mapping(value, path)
    _check_fields(errors, {"on_init_failure", "on_panic"}, path)
    if errors.get("on_panic") is not None:
        raise InvalidSpec(f"{path}.on_panic", "applies to services; a job ends instead")
    policy = _mapping(errors.get("on_init_failure"), f"{path}.on_init_failure")
    _check_fields(policy, {"action"}, f"{path}.on_init_failure")
    try:
        return InitFailurePolicy(policy.get("action", InitFailurePolicy.FAIL.value))
    except ValueError:
        raise InvalidSpec(
            f"{path}.on_init_failure.action", "must be fail, restart or backoff"
        ) from None


def parse_duration(value: Any, path: str) -> float:
    """Seconds of a duration: a number of seconds, or "500ms", "30s", "5m", "1h30m", "1d"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif (
        isinstance(value, str) and value and DURATION_PATTERN.sub("", value.replace(" ", "")) == ""
    ):
        seconds = sum(
            float(number) * DURATION_UNITS[unit]
            for number, unit in DURATION_PATTERN.findall(value.replace(" ", ""))
        )
    else:
        raise InvalidSpec(path, f"{value!r} is not a duration such as 30s, 5m or 1h30m")
    check_duration(seconds, path)
    return seconds


def _optional_duration(mapping: Mapping[str, Any], key: str, path: str) -> float | None:
    value = mapping.get(key)
    return None if value is None else parse_duration(value, _join(path, key))


def _grace(seconds: float | None, path: str) -> float | None:
    if seconds is not None and seconds > MAX_GRACE_SECONDS:
        raise InvalidSpec(path, f"must be at most {MAX_GRACE_SECONDS:g}s")
    return seconds


def normalize_signal(value: Any, path: str) -> str:
    """A signal by name or number ("TERM", "SIGTERM", 15) -> "SIGTERM"; InvalidSpec at
    `path` for anything else."""
    name = signal_name(value)
    if name is None:
        raise InvalidSpec(path, f"{value!r} is not a signal")
    return name


def _signal(value: Any, path: str) -> str:
    return "" if value is None else normalize_signal(value, path)


def _user(value: Any, path: str) -> str:
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not USER_PATTERN.fullmatch(value):
        raise InvalidSpec(path, "must be a user name or id, optionally with :group")
    return value


def check_label_key(key: str, path: str) -> None:
    """A label key is a plain annotation key outside the runtime-reserved prefixes."""
    if not LABEL_KEY_PATTERN.fullmatch(key):
        raise InvalidSpec(
            path,
            "must be letters, digits and '._/-', at most 253 characters, "
            "starting and ending with a letter or digit",
        )
    for prefix in RESERVED_LABEL_PREFIXES:
        if key.startswith(prefix):
            raise InvalidSpec(path, f"the prefix {prefix!r} is reserved for the runtime")


def _labels(value: Any, path: str) -> dict[str, str]:
    labels = _mapping(value, path)
    for key, item in labels.items():
        if not isinstance(item, str | int | float) or isinstance(item, bool):
            raise InvalidSpec(f"{path}.{key}", "must be a string")
    return {str(key): str(item) for key, item in labels.items()}


def _command(value: Any, path: str) -> CommandSpec:
    command = _mapping(value, path)
    _check_fields(command, COMMAND_FIELDS, path)
    return CommandSpec(
        entrypoint=_string_list(command.get("entrypoint", []), f"{path}.entrypoint"),
        args=_string_list(command.get("args", []), f"{path}.args"),
        workdir=_optional_string(command, "workdir", path),
    )


def _env(value: Any, path: str) -> dict[str, str]:
    env = _mapping(value, path)
    result = {}
    for key, item in env.items():
        if not isinstance(key, str) or not ENV_NAME_PATTERN.fullmatch(key):
            raise InvalidSpec(f"{path}.{key}", "is not a valid environment variable name")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise InvalidSpec(f"{path}.{key}", "must be a string")
        result[key] = str(item)
    return result


def _check_fields(mapping: Mapping[str, Any], known: set[str], path: str) -> None:
    for key in mapping:
        if key not in known:
            raise InvalidSpec(_join(path, str(key)), "unknown field")


def _required(mapping: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in mapping or mapping[key] is None:
        raise InvalidSpec(_join(path, key), "is required")
    return mapping[key]


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidSpec(path, "must be a mapping")
    return value


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidSpec(path, "must be a non-empty string")
    return value


def _optional_string(mapping: Mapping[str, Any], key: str, path: str) -> str:
    value = mapping.get(key)
    return "" if value is None else _string(value, _join(path, key))


def _string_list(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidSpec(path, "must be a list of strings")
    return tuple(value)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _name_rule(name: str) -> str:
    return (
        f"{name!r} must be 1-63 lowercase letters, digits or '-', starting and ending alphanumeric"
    )
