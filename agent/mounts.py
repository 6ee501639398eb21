"""Storage and host access of a job: the seed's `storage` list, and the host policy.

Bind mounts come only from host paths under the agent's allowlist; anything else is
refused at registration, never mounted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from agent.containerpath import is_absolute_normalized
from agent.domain import HostPolicy, Mount, MountKind
from agent.errors import InvalidSpec

VOLUME_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
MOUNT_FIELDS: dict[MountKind, set[str]] = {
    MountKind.BIND: {"type", "source", "target", "readonly"},
    MountKind.NAMED: {"type", "name", "target", "readonly", "tier", "size"},
    MountKind.ANONYMOUS: {"type", "target", "tier"},
    MountKind.TMPFS: {"type", "target", "size", "mode"},
}
TIERS = {"local"}
# Reads a size such as 64Mi; the second argument is the field path for errors.
SizeParser = Callable[[Any, str], int]


def parse_storage(value: Any, path: str, parse_size: SizeParser) -> tuple[Mount, ...]:
    """Parses the `storage` list; `parse_size(value, path)` reads sizes such as 64Mi."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidSpec(path, "must be a list")
    mounts = []
    targets: set[str] = set()
    for index, item in enumerate(value):
        where = f"{path}[{index}]"
        mount = _parse_mount(item, where, parse_size)
        if mount.target in targets:
            raise InvalidSpec(f"{where}.target", f"{mount.target} is mounted twice")
        targets.add(mount.target)
        mounts.append(mount)
    return tuple(mounts)


def _parse_mount(item: Any, path: str, parse_size: SizeParser) -> Mount:
    if not isinstance(item, dict):
        raise InvalidSpec(path, "must be a mapping with a type")
    kind_name = item.get("type")
    try:
        kind = MountKind(kind_name)
    except ValueError:
        choices = ", ".join(kind.value for kind in MountKind)
        raise InvalidSpec(f"{path}.type", f"{kind_name!r} is not one of {choices}") from None
    for key in item:
        if key not in MOUNT_FIELDS[kind]:
            raise InvalidSpec(f"{path}.{key}", "unknown field")
    target = item.get("target")
    if not isinstance(target, str) or not _inside_container(target):
        raise InvalidSpec(f"{path}.target", "must be an absolute path inside the container")
    readonly = item.get("readonly", False)
    if not isinstance(readonly, bool):
        raise InvalidSpec(f"{path}.readonly", "must be true or false")
    if item.get("tier", "local") not in TIERS:
        raise InvalidSpec(f"{path}.tier", "only local storage is available on this node")
    if kind is MountKind.BIND:
        source = item.get("source")
        if not is_absolute_normalized(source):
            raise InvalidSpec(f"{path}.source", "must be an absolute, normalized host path")
        return Mount(kind, target, source=source, readonly=readonly)
    if kind is MountKind.NAMED:
        name = item.get("name")
        if not isinstance(name, str) or not VOLUME_NAME.fullmatch(name):
            raise InvalidSpec(f"{path}.name", "must be a volume name (a-z, 0-9, _.-)")
        size = _size(item, path, parse_size)
        return Mount(kind, target, source=name, readonly=readonly, size_bytes=size)
    if kind is MountKind.TMPFS:
        mode = item.get("mode")
        if mode is not None and (
            isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o7777
        ):
            raise InvalidSpec(f"{path}.mode", "must be a file mode such as 0o1777 (1023)")
        return Mount(kind, target, size_bytes=_size(item, path, parse_size), mode=mode)
    return Mount(kind, target)


def _size(item: dict[str, Any], path: str, parse_size: SizeParser) -> int | None:
    value = item.get("size")
    return None if value is None else parse_size(value, f"{path}.size")


def check_mounts(mounts: Sequence[Mount], path: str) -> None:
    """Checks mounts that arrived as structured messages, as parse_storage checks YAML."""
    targets: set[str] = set()
    for index, mount in enumerate(mounts):
        where = f"{path}[{index}]"
        if not _inside_container(mount.target) or mount.target in targets:
            raise InvalidSpec(f"{where}.target", "must be a distinct absolute container path")
        targets.add(mount.target)
        if mount.kind is MountKind.BIND and not is_absolute_normalized(mount.source):
            raise InvalidSpec(f"{where}.source", "must be an absolute, normalized host path")
        if mount.kind is MountKind.NAMED and not VOLUME_NAME.fullmatch(mount.source):
            raise InvalidSpec(f"{where}.source", "must be a volume name (a-z, 0-9, _.-)")
        if mount.mode is not None and not 0 <= mount.mode <= 0o7777:
            raise InvalidSpec(f"{where}.mode", "must be a file mode such as 0o1777 (1023)")


def _inside_container(target: object) -> bool:
    return is_absolute_normalized(target) and target != "/"


def check_host_access(
    mounts: Sequence[Mount], host_network: bool, policy: HostPolicy, path: str
) -> None:
    """Refuses bind sources outside the allowlist and host networking the agent forbids."""
    for index, mount in enumerate(mounts):
        if mount.kind is MountKind.BIND and not _allowed(mount.source, policy.bind_allowlist):
            raise InvalidSpec(
                f"{path}.storage[{index}].source",
                f"{mount.source} is not under a host path the agent allows for bind mounts",
            )
    if host_network and not policy.allow_host_network:
        raise InvalidSpec(f"{path}.host_network", "the agent does not allow host networking")


def _allowed(source: str, allowlist: Sequence[str]) -> bool:
    real = os.path.realpath(source)
    return any(
        real == os.path.realpath(root) or real.startswith(os.path.realpath(root).rstrip("/") + "/")
        for root in allowlist
    )
