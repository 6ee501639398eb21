"""What a job may hold beyond the default container: `privileged`, extra capabilities,
the host's user namespace.

Each is refused unless the agent's configuration allows it (--allow-privileged,
--allow-capability, --allow-host-userns), so a registration cannot widen what the node
operator chose; and checked again at every run, against the flags the agent runs with then.
"""

from __future__ import annotations

from typing import Any

from agent.domain import HostPolicy, JobSpec, UserNamespace
from agent.errors import InvalidSpec
from agent.mounts import check_host_access

# Every capability Linux defines (capability.h), by its runtime-spec name.
ALL_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)


def normalize_capability(name: Any, path: str) -> str:
    """NET_ADMIN, net_admin and CAP_NET_ADMIN all name CAP_NET_ADMIN."""
    if not isinstance(name, str):
        raise InvalidSpec(path, "must be a capability name such as NET_ADMIN")
    full = name.upper() if name.upper().startswith("CAP_") else f"CAP_{name.upper()}"
    if full not in ALL_CAPABILITIES:
        raise InvalidSpec(path, f"{name!r} is not a Linux capability")
    return full


def parse_capabilities(value: Any, path: str) -> tuple[str, ...]:
    """The `capabilities` list of a service."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidSpec(path, "must be a list of capability names")
    return tuple(normalize_capability(item, f"{path}[{index}]") for index, item in enumerate(value))


def check_host_policy(spec: JobSpec, policy: HostPolicy, path: str) -> None:
    """Everything the agent's flags decide about a job: privileged, capabilities, host
    networking and bind sources. Raises InvalidSpec naming the field."""
    check_host_access(spec.storage, spec.host_network, policy, path)
    check_privileges(spec, policy, path)


def check_privileges(spec: JobSpec, policy: HostPolicy, path: str) -> None:
    """Refuses what the agent's configuration does not allow."""
    if spec.privileged and not policy.allow_privileged:
        raise InvalidSpec(
            f"{path}.privileged", "the agent does not allow privileged jobs (--allow-privileged)"
        )
    if spec.user_namespace is UserNamespace.HOST and not policy.allow_host_userns:
        reason = "the agent does not allow jobs in the host's user namespace"
        raise InvalidSpec(f"{path}.user_namespace", f"{reason} (--allow-host-userns)")
    for index, name in enumerate(spec.capabilities):
        normalize_capability(name, f"{path}.capabilities[{index}]")
        if name not in policy.allowed_capabilities:
            raise InvalidSpec(
                f"{path}.capabilities[{index}]",
                f"the agent does not allow {name} (--allow-capability)",
            )


def parse_user_namespace(value: Any, path: str) -> UserNamespace:
    """The `user_namespace` of a service: private (the default) or host."""
    if value is None:
        return UserNamespace.PRIVATE
    try:
        return UserNamespace(value)
    except ValueError:
        raise InvalidSpec(path, "must be private or host") from None
