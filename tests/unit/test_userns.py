"""User namespaces: id range allocation, the spec's field and its policy, the config's
mappings, the host-side helpers (namespaces, ownership shifts)."""

from __future__ import annotations

import asyncio
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jobagent.v1 import jobs_pb2 as pb

from agent.api.convert import job_spec_from_proto, job_spec_to_proto
from agent.config import check_id_ranges, parse_id_ranges
from agent.domain import (
    FailureReason,
    HostPolicy,
    IdRange,
    IdRangePool,
    ImageSpec,
    Job,
    JobSpec,
    Status,
    Trigger,
    TriggerKind,
    UserNamespace,
)
from agent.errors import InvalidSpec, NotFound, ResourceExhausted
from agent.executor import Executor
from agent.runtime.bundle import ProcessSpec, build_config
from agent.runtime.userns import IdMapping, NamespaceCache, shift_tree
from agent.spec import parse_document, validate_job_spec
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime

NOW = datetime(2026, 1, 2, tzinfo=UTC)
ROOT = os.geteuid() == 0
TRIGGER = Trigger(TriggerKind.INTERNAL, reason="test")


def spec(name: str, userns: UserNamespace = UserNamespace.PRIVATE) -> JobSpec:
    return JobSpec(name=name, image=ImageSpec("busybox"), user_namespace=userns)


def test_a_job_holds_the_lowest_free_slot_until_it_is_unregistered(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    for name in ("a", "b"):
        store.put_job(Job(spec(name), NOW, NOW))
    assert store.user_range_slot("a", 2) == 0
    assert store.user_range_slot("b", 2) == 1
    assert store.user_range_slot("a", 2) == 0
    assert store.free_user_range_slots(2) == 0
    store.put_job(Job(spec("c"), NOW, NOW))
    with pytest.raises(ResourceExhausted):
        store.user_range_slot("c", 2)
    store.delete_job("a")
    assert store.user_range_slot("c", 2) == 0
    # A pool that shrank gives a job beyond it a slot that is still inside.
    store.delete_job("b")
    assert store.user_range_slot("c", 1) == 0


async def test_registration_gives_each_job_a_range_and_refuses_when_none_is_left(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db")
    pool = IdRangePool(start=1 << 20, count=2 * 65536)
    executor = Executor(store, FakeRuntime(), tmp_path / "logs", id_ranges=pool)
    try:
        executor.register_jobs([spec("a"), spec("host", UserNamespace.HOST)], "", False)
        executor.register_jobs([spec("b")], "", False)
        assert executor.id_range(spec("a")) == IdRange(1 << 20)
        assert executor.id_range(spec("b")) == IdRange((1 << 20) + 65536)
        assert executor.id_range(spec("host", UserNamespace.HOST)) is None
        privileged = JobSpec(name="a", image=ImageSpec("busybox"), privileged=True)
        assert executor.id_range(privileged) is None
        with pytest.raises(ResourceExhausted, match="--userns-range"):
            executor.register_jobs([spec("c")], "", False)
        with pytest.raises(NotFound):
            executor.get_job("c")
        executor.unregister_job("a")
        executor.register_jobs([spec("c")], "", False)
        assert executor.id_range(spec("c")) == IdRange(1 << 20)
    finally:
        await executor.close()
        store.close()


async def test_a_run_gets_its_jobs_range_and_fails_at_create_when_none_is_left(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "db")
    runtime = FakeRuntime()
    pool = IdRangePool(start=1 << 20, count=65536)
    executor = Executor(store, runtime, tmp_path / "logs", id_ranges=pool)
    try:
        executor.register_jobs([spec("holder")], "", False)
        # Registered before ranges were given out: it has none, and none is left.
        store.put_job(Job(spec("late"), NOW, NOW))
        execution = await executor.trigger("late", TRIGGER)
        async for _ in executor.watch(execution.id):
            pass
        failed = executor.get_execution(execution.id)
        assert failed.status is Status.FAILED
        assert failed.failure_reason is FailureReason.CREATE
        assert "--userns-range" in failed.message
        execution = await executor.trigger("holder", TRIGGER)
        await asyncio.wait_for(runtime.started_event.wait(), 5)
        assert runtime.requests[-1].id_range == IdRange(1 << 20)
        runtime.exit(runtime.requests[-1].container_id, 0)
    finally:
        await executor.close()
        store.close()


def test_the_spec_field_parses_is_policed_and_round_trips() -> None:
    body = (
        "version: v1\ndeployment: d\nservices:\n  j:\n    rtype: job\n"
        "    image: {name: busybox}\n    user_namespace: %s\n"
    )
    with pytest.raises(InvalidSpec) as refused:
        parse_document(body % "host")
    assert refused.value.field == "services.j.user_namespace"
    assert "--allow-host-userns" in refused.value.reason
    with pytest.raises(InvalidSpec) as bad:
        parse_document(body % "shared")
    assert bad.value.field == "services.j.user_namespace"
    [job] = parse_document(body % "host", HostPolicy(allow_host_userns=True))
    assert job.user_namespace is UserNamespace.HOST and not job.own_user_namespace
    [job] = parse_document(body % "private")
    assert job.user_namespace is UserNamespace.PRIVATE and job.own_user_namespace
    for value in UserNamespace:
        message = job_spec_to_proto(spec("j", value))
        assert job_spec_from_proto(message).user_namespace is value
    with pytest.raises(InvalidSpec) as structured:
        validate_job_spec(job_spec_from_proto(job_spec_to_proto(spec("j", UserNamespace.HOST))))
    assert structured.value.field == "spec.user_namespace"
    unknown = pb.JobSpec(name="j", user_namespace=7)  # type: ignore[arg-type]
    with pytest.raises(InvalidSpec, match="user_namespace"):
        job_spec_from_proto(unknown)


def test_the_store_keeps_the_field(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    store.put_job(Job(spec("h", UserNamespace.HOST), NOW, NOW))
    assert store.get_job("h").spec.user_namespace is UserNamespace.HOST


@pytest.mark.parametrize(
    ("text", "pool"),
    [
        ("1048576:4194304", IdRangePool(1 << 20, 64 * 65536)),
        ("65536:65536", IdRangePool(65536, 65536)),
    ],
)
def test_the_range_flag_reads_as_a_subuid_line(text: str, pool: IdRangePool) -> None:
    assert parse_id_ranges(text) == pool
    check_id_ranges(pool)


@pytest.mark.parametrize(
    "text", ["1048576", "x:65536", "0:65536", "65536:100", f"{2**32 - 65536}:65536"]
)
def test_a_range_that_cannot_hold_a_job_safely_is_refused(text: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        check_id_ranges(parse_id_ranges(text))
    assert refused.value.field == "userns_range"


def test_the_config_maps_the_range_and_binds_sys_with_the_host_network(tmp_path: Path) -> None:
    process = ProcessSpec(args=("true",), env=(), cwd="/")
    config = build_config(process, tmp_path, "h", "/x", id_range=IdRange(1 << 21))
    mapping = [{"containerID": 0, "hostID": 1 << 21, "size": 65536}]
    assert config["linux"]["uidMappings"] == mapping == config["linux"]["gidMappings"]
    assert {"type": "user"} in config["linux"]["namespaces"]
    [sysfs] = [mount for mount in config["mounts"] if mount["destination"] == "/sys"]
    assert sysfs["type"] == "sysfs"
    shared = build_config(
        process, tmp_path, "h", "/x", host_network=True, id_range=IdRange(1 << 21)
    )
    [sysfs] = [mount for mount in shared["mounts"] if mount["destination"] == "/sys"]
    assert sysfs["type"] == "bind" and "ro" in sysfs["options"]
    plain = build_config(process, tmp_path, "h", "/x")
    assert "uidMappings" not in plain["linux"]
    assert {"type": "user"} not in plain["linux"]["namespaces"]


def test_a_mapping_is_a_line_of_uid_map() -> None:
    assert IdMapping.of(IdRange(1 << 20)).line() == "0 1048576 65536\n"
    assert IdMapping(1 << 20, 1 << 21).line() == "1048576 2097152 65536\n"


@pytest.mark.skipif(not ROOT, reason="chown needs root")
def test_a_shifted_tree_keeps_set_uid_bits_and_leaves_ids_beyond_the_first_range(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "volume"
    (tree / "sub").mkdir(parents=True)
    tool = tree / "sub" / "tool"
    tool.write_text("x")
    tool.chmod(0o4755)
    (tree / "link").symlink_to("sub/tool")
    foreign = tree / "foreign"
    foreign.write_text("y")
    os.chown(foreign, 70000, 70000)
    os.chown(tree / "sub", 1000, 1000)
    shift_tree(tree, 1 << 20)
    assert os.stat(tree).st_uid == 1 << 20
    assert os.stat(tree / "sub").st_uid == (1 << 20) + 1000
    assert os.stat(tool).st_uid == 1 << 20 and stat.S_IMODE(os.stat(tool).st_mode) == 0o4755
    assert os.lstat(tree / "link").st_uid == 1 << 20
    assert os.stat(foreign).st_uid == 70000


@pytest.mark.skipif(not ROOT, reason="mapping a user namespace needs root")
def test_a_namespace_per_mapping_is_made_once_and_has_that_mapping() -> None:
    cache = NamespaceCache()
    try:
        first = cache.fd(IdMapping.of(IdRange(1 << 20)))
        assert cache.fd(IdMapping.of(IdRange(1 << 20))) == first
        other = cache.fd(IdMapping(1 << 20, 1 << 21))
        assert other != first
        link = os.readlink(f"/proc/self/fd/{first}")
        assert link.startswith("user:[") and link != os.readlink("/proc/self/ns/user")
    finally:
        cache.close()
