"""Dispatch parameters and idempotent triggers, through the executor with a fake runtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.dispatch import MAX_PAYLOAD_BYTES, check_dispatch, parse_dispatch_policy
from agent.domain import (
    CommandSpec,
    Dispatch,
    DispatchPolicy,
    ImageSpec,
    JobSpec,
    PayloadRequirement,
    Trigger,
    TriggerKind,
    TriggerRequest,
)
from agent.errors import InvalidSpec
from agent.executor import Executor
from agent.spec import parse_document
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime

TRIGGER = Trigger(TriggerKind.ENDPOINT)
POLICY = DispatchPolicy(
    payload=PayloadRequirement.OPTIONAL, env=("REGION",), required_env=("DATE",), args=True
)
PARAMETERIZED = JobSpec(
    "report",
    ImageSpec("busybox"),
    env={"REGION": "eu", "KEEP": "1"},
    command=CommandSpec(("/bin/report",), ("--verbose",)),
    dispatch=POLICY,
)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[Executor, FakeRuntime, Store]]:
    runtime = FakeRuntime()
    store = Store(tmp_path / "db")
    executor = Executor(store, runtime, tmp_path / "logs")
    executor.register_jobs([PARAMETERIZED, JobSpec("plain", ImageSpec("busybox"))], "", False)
    yield executor, runtime, store
    await executor.close()
    store.close()


@pytest.mark.parametrize(
    ("dispatch", "field"),
    [
        (Dispatch(env={"REGION": "us"}), "env.DATE"),
        (Dispatch(env={"DATE": "x", "HOME": "/"}), "env.HOME"),
        (Dispatch(env={"DATE": "x\0y"}), "env.DATE"),
        (Dispatch(env={"DATE": "x"}, payload=b"x" * (MAX_PAYLOAD_BYTES + 1)), "payload"),
        (Dispatch(env={"DATE": "x"}, args=("a",) * 65), "args"),
    ],
)
def test_what_the_job_does_not_allow_is_refused_naming_the_field(
    dispatch: Dispatch, field: str
) -> None:
    with pytest.raises(InvalidSpec) as caught:
        check_dispatch(POLICY, dispatch)
    assert caught.value.field == field


def test_a_job_without_a_dispatch_section_takes_nothing() -> None:
    for dispatch, field in (
        (Dispatch(args=("x",)), "args"),
        (Dispatch(env={"A": "1"}), "env.A"),
        (Dispatch(payload=b"x"), "payload"),
    ):
        with pytest.raises(InvalidSpec) as caught:
            check_dispatch(DispatchPolicy(), dispatch)
        assert caught.value.field == field
    with pytest.raises(InvalidSpec) as caught:
        check_dispatch(DispatchPolicy(payload=PayloadRequirement.REQUIRED), Dispatch())
    assert caught.value.field == "payload"


def test_the_dispatch_section_of_a_deployment_document() -> None:
    document = (
        "version: v1\ndeployment: d\nservices:\n  report:\n    rtype: job\n"
        "    image: {name: busybox}\n    dispatch: {payload: required, payload_path: /in/data,"
        " env: [REGION], required_env: [DATE], args: true}\n"
    )
    [spec] = parse_document(document)
    assert spec.dispatch == DispatchPolicy(
        PayloadRequirement.REQUIRED, "/in/data", ("REGION",), ("DATE",), True
    )
    for bad, field in (
        ({"payload": "maybe"}, "d.payload"),
        ({"payload_path": "rel"}, "d.payload_path"),
        ({"payload_path": "/a/../b"}, "d.payload_path"),
        ({"env": ["1X"]}, "d.env[0]"),
        ({"argz": True}, "d.argz"),
    ):
        with pytest.raises(InvalidSpec) as caught:
            parse_dispatch_policy(bad, "d")
        assert caught.value.field == field


async def test_parameters_reach_the_container_after_the_jobs_own(
    rig: tuple[Executor, FakeRuntime, Store],
) -> None:
    executor, runtime, _ = rig
    request = TriggerRequest(dispatch=Dispatch(("2026-11-26",), {"DATE": "today"}, b"{}"))
    execution = await executor.trigger("report", TRIGGER, request)
    while not runtime.requests:
        await asyncio.sleep(0.01)
    [container] = runtime.requests
    assert container.command.args == ("--verbose", "2026-11-26")
    assert dict(container.env) == {"REGION": "eu", "KEEP": "1", "DATE": "today"}
    assert container.files == {"/run/dispatch/payload": b"{}"}
    assert executor.trigger_request(execution.id) == request


async def test_a_repeated_request_id_returns_the_first_execution_and_runs_nothing_more(
    rig: tuple[Executor, FakeRuntime, Store],
) -> None:
    executor, runtime, _ = rig
    request = TriggerRequest("8d3c-request", Dispatch(env={"DATE": "d"}))
    first = await executor.trigger("report", TRIGGER, request)
    again = await asyncio.gather(*(executor.trigger("report", TRIGGER, request) for _ in range(5)))
    assert {execution.id for execution in again} == {first.id}
    assert len(executor.list_executions("report")) == 1
    for other in (
        TriggerRequest("8d3c-request", Dispatch(env={"DATE": "e"})),
        TriggerRequest("8d3c-request"),
    ):
        with pytest.raises(InvalidSpec) as caught:
            await executor.trigger("report", TRIGGER, other)
        assert caught.value.field == "request_id"
    with pytest.raises(InvalidSpec):
        await executor.trigger("plain", TRIGGER, TriggerRequest("8d3c-request"))
    while not runtime.created:
        await asyncio.sleep(0.01)
    assert len(runtime.created) == 1


async def test_a_request_id_holds_across_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    executor = Executor(store, FakeRuntime(), tmp_path / "logs")
    executor.register_jobs([JobSpec("plain", ImageSpec("busybox"))], "", False)
    first = await executor.trigger("plain", TRIGGER, TriggerRequest("once"))
    await executor.close()
    store.close()
    store = Store(tmp_path / "db")
    executor = Executor(store, FakeRuntime(), tmp_path / "logs")
    try:
        assert (await executor.trigger("plain", TRIGGER, TriggerRequest("once"))).id == first.id
        assert len(executor.list_executions("plain")) == 1
    finally:
        await executor.close()
        store.close()
