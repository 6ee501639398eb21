"""Storage entries and the host policy: what a job may mount and reach."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.domain import HostPolicy, Mount, MountKind
from agent.errors import InvalidSpec
from agent.mounts import check_host_access, check_mounts, parse_storage
from agent.spec import parse_document, parse_memory


def parse(items: list[object]) -> tuple[Mount, ...]:
    return parse_storage(items, "s", parse_memory)


def test_every_storage_type_parses() -> None:
    mounts = parse(
        [
            {"type": "bind", "source": "/srv/in", "target": "/in", "readonly": True},
            {"type": "named", "name": "cache", "target": "/cache", "size": "1Gi"},
            {"type": "anonymous", "target": "/tmpdata"},
            {"type": "tmpfs", "target": "/scratch", "size": "64Mi", "mode": 0o1777},
        ]
    )
    assert [m.kind for m in mounts] == [
        MountKind.BIND,
        MountKind.NAMED,
        MountKind.ANONYMOUS,
        MountKind.TMPFS,
    ]
    assert mounts[0].readonly and mounts[1].source == "cache"
    assert (mounts[3].size_bytes, mounts[3].mode) == (64 << 20, 0o1777)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"type": "s3", "bucket": "b", "target": "/b"}, "s[0].type"),
        ({"type": "tmpfs", "target": "relative"}, "s[0].target"),
        ({"type": "tmpfs", "target": "/a/../etc"}, "s[0].target"),
        ({"type": "bind", "source": "etc", "target": "/e"}, "s[0].source"),
        ({"type": "named", "name": "../up", "target": "/e"}, "s[0].name"),
        ({"type": "named", "name": "v", "target": "/e", "tier": "network"}, "s[0].tier"),
        ({"type": "tmpfs", "target": "/t", "colour": "red"}, "s[0].colour"),
    ],
)
def test_bad_entries_name_the_field(item: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse([item])
    assert caught.value.field == field


def test_binds_must_stay_under_the_allowlist_even_through_symlinks(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "data").mkdir(parents=True)
    (allowed / "escape").symlink_to("/etc")
    policy = HostPolicy(bind_allowlist=(str(allowed),))

    def bind(source: Path) -> tuple[Mount, ...]:
        return (Mount(MountKind.BIND, "/in", source=str(source)),)

    check_host_access(bind(allowed / "data"), False, policy, "job")
    for outside in (allowed / "escape", tmp_path, Path("/etc")):
        with pytest.raises(InvalidSpec) as caught:
            check_host_access(bind(outside), False, policy, "job")
        assert caught.value.field == "job.storage[0].source"
    with pytest.raises(InvalidSpec) as caught:
        check_host_access((), True, policy, "job")
    assert caught.value.field == "job.host_network"
    check_host_access((), True, HostPolicy(allow_host_network=True), "job")


def test_structured_mounts_are_checked_like_yaml() -> None:
    with pytest.raises(InvalidSpec) as caught:
        check_mounts([Mount(MountKind.TMPFS, "/a"), Mount(MountKind.TMPFS, "/a")], "spec.storage")
    assert caught.value.field == "spec.storage[1].target"


def test_privileged_and_extra_capabilities_need_the_agents_leave() -> None:
    document = (
        "version: v1\ndeployment: d\nservices:\n  p:\n    rtype: job\n"
        "    image: {name: busybox}\n    privileged: true\n"
        "    capabilities: [net_admin, CAP_SYS_TIME]\n"
    )
    cases = (
        (HostPolicy(), "services.p.privileged"),
        (HostPolicy(allow_privileged=True), "services.p.capabilities[0]"),
    )
    for policy, field in cases:
        with pytest.raises(InvalidSpec) as caught:
            parse_document(document, policy)
        assert caught.value.field == field
    capabilities = frozenset({"CAP_NET_ADMIN", "CAP_SYS_TIME"})
    allowed = HostPolicy(allow_privileged=True, allowed_capabilities=capabilities)
    [spec] = parse_document(document, allowed)
    assert spec.privileged and spec.capabilities == ("CAP_NET_ADMIN", "CAP_SYS_TIME")
    with pytest.raises(InvalidSpec) as caught:
        parse_document(document.replace("net_admin", "WIZARDRY"), allowed)
    assert caught.value.field == "services.p.capabilities[0]"
