"""Dispatch parameters: what a job lets a trigger add, and the checks of what one adds.

A job's `dispatch` section (as a Nomad parameterized job) names the env a trigger may and
must set, whether it may append args, and whether it may, must or must not carry a payload,
which the container sees as a read-only file at `payload_path`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from agent.containerpath import is_absolute_normalized
from agent.domain import DEFAULT_PAYLOAD_PATH, Dispatch, DispatchPolicy, PayloadRequirement
from agent.errors import InvalidSpec

DISPATCH_FIELDS = {"payload", "payload_path", "env", "required_env", "args"}
ENV_NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_PAYLOAD_BYTES = 16 * 1024
MAX_ARGS = 64
MAX_VALUE_BYTES = 4096


def parse_dispatch_policy(value: Any, path: str) -> DispatchPolicy:
    """The `dispatch` section of a service (absent: the job takes no parameters)."""
    if value is None:
        return DispatchPolicy()
    if not isinstance(value, Mapping):
        raise InvalidSpec(path, "must be a mapping")
    for key in value:
        if key not in DISPATCH_FIELDS:
            raise InvalidSpec(
                f"{path}.{key}", f"is not a dispatch field ({sorted(DISPATCH_FIELDS)})"
            )
    try:
        payload = PayloadRequirement(value.get("payload", PayloadRequirement.FORBIDDEN.value))
    except ValueError:
        raise InvalidSpec(f"{path}.payload", "must be forbidden, optional or required") from None
    args = value.get("args", False)
    if not isinstance(args, bool):
        raise InvalidSpec(f"{path}.args", "must be true or false")
    policy = DispatchPolicy(
        payload=payload,
        payload_path=value.get("payload_path", DEFAULT_PAYLOAD_PATH),
        env=_names(value.get("env", []), f"{path}.env"),
        required_env=_names(value.get("required_env", []), f"{path}.required_env"),
        args=args,
    )
    check_dispatch_policy(policy, path)
    return policy


def check_dispatch_policy(policy: DispatchPolicy, path: str) -> None:
    """A policy's own consistency: an absolute, normalized payload path."""
    target = policy.payload_path
    if not is_absolute_normalized(target) or target == "/":
        raise InvalidSpec(f"{path}.payload_path", "must be an absolute, normalized file path")
    for index, name in enumerate((*policy.env, *policy.required_env)):
        if not ENV_NAME_PATTERN.fullmatch(name):
            raise InvalidSpec(f"{path}.env[{index}]", f"{name!r} is not an environment name")


def check_dispatch(policy: DispatchPolicy, dispatch: Dispatch) -> None:
    """Refuses what the job does not allow, naming the request field."""
    if dispatch.args:
        if not policy.args:
            raise InvalidSpec("args", "the job does not take args (dispatch.args is not true)")
        if len(dispatch.args) > MAX_ARGS:
            raise InvalidSpec("args", f"at most {MAX_ARGS} args")
        for index, arg in enumerate(dispatch.args):
            if len(arg.encode()) > MAX_VALUE_BYTES or "\0" in arg:
                raise InvalidSpec(f"args[{index}]", f"at most {MAX_VALUE_BYTES} bytes, no NUL")
    allowed = {*policy.env, *policy.required_env}
    for name, value in dispatch.env.items():
        if name not in allowed:
            raise InvalidSpec(
                f"env.{name}",
                f"the job does not let a trigger set it (allowed: {sorted(allowed) or 'none'})",
            )
        if len(value.encode()) > MAX_VALUE_BYTES or "\0" in value:
            raise InvalidSpec(f"env.{name}", f"at most {MAX_VALUE_BYTES} bytes, no NUL")
    for name in policy.required_env:
        if name not in dispatch.env:
            raise InvalidSpec(f"env.{name}", "is required by the job")
    if dispatch.payload and policy.payload is PayloadRequirement.FORBIDDEN:
        raise InvalidSpec("payload", "the job takes no payload")
    if not dispatch.payload and policy.payload is PayloadRequirement.REQUIRED:
        raise InvalidSpec("payload", "is required by the job")
    if len(dispatch.payload) > MAX_PAYLOAD_BYTES:
        raise InvalidSpec("payload", f"at most {MAX_PAYLOAD_BYTES} bytes")


def fingerprint(job_name: str, dispatch: Dispatch) -> str:
    """A digest of what a trigger asked for: a repeated request_id must ask the same."""
    content = json.dumps(
        [
            job_name,
            list(dispatch.args),
            sorted(dispatch.env.items()),
            hashlib.sha256(dispatch.payload).hexdigest(),
        ]
    )
    return hashlib.sha256(content.encode()).hexdigest()


def _names(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidSpec(path, "must be a list of environment names")
    return tuple(value)
