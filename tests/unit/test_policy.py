"""The agent's host policy is checked at every run, against the flags it runs with then:
a job registered under --allow-privileged never runs with that privilege after a restart
without it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from agent.domain import (
    FailureReason,
    HostPolicy,
    ImageSpec,
    JobSpec,
    Mount,
    MountKind,
    Status,
    Trigger,
    TriggerKind,
)
from agent.errors import FailedPrecondition, HostPolicyRefused
from agent.executor import Executor
from tests.unit.fake_runtime import FakeRuntime

SPEC = JobSpec(name="powerful", image=ImageSpec("busybox:latest"), privileged=True)
ALLOWED = HostPolicy(allow_privileged=True)
CALLER = Trigger(TriggerKind.ENDPOINT, remote_address="ipv4:127.0.0.1:1")
SCHEDULE = Trigger(TriggerKind.SCHEDULER, reason="schedule * * * * * at now")


@pytest.mark.parametrize(
    ("spec", "allowed", "field"),
    [
        (SPEC, ALLOWED, "spec.privileged"),
        (
            replace(SPEC, privileged=False, capabilities=("CAP_NET_ADMIN",)),
            HostPolicy(allowed_capabilities=frozenset({"CAP_NET_ADMIN"})),
            "spec.capabilities[0]",
        ),
        (
            replace(SPEC, privileged=False, host_network=True),
            HostPolicy(allow_host_network=True),
            "spec.host_network",
        ),
        (
            replace(SPEC, privileged=False, storage=(Mount(MountKind.BIND, "/in", "/srv"),)),
            HostPolicy(bind_allowlist=("/srv",)),
            "spec.storage[0].source",
        ),
    ],
)
async def test_a_trigger_after_the_flag_is_gone_is_refused_naming_the_field(
    make_executor: Callable[..., Executor],
    runtime: FakeRuntime,
    spec: JobSpec,
    allowed: HostPolicy,
    field: str,
) -> None:
    make_executor(spec, host_policy=allowed)
    restarted = make_executor(host_policy=HostPolicy())
    with pytest.raises(FailedPrecondition) as caught:
        await restarted.trigger(spec.name, CALLER)
    assert isinstance(caught.value, HostPolicyRefused)
    assert caught.value.field == field
    assert restarted.list_executions(spec.name) == []
    assert runtime.created == []


async def test_a_scheduled_run_after_the_flag_is_gone_fails_naming_the_field(
    make_executor: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    make_executor(SPEC, host_policy=ALLOWED)
    restarted = make_executor(host_policy=HostPolicy())
    execution = await restarted.trigger(SPEC.name, SCHEDULE)
    assert execution.status is Status.FAILED
    assert execution.failure_reason is FailureReason.CREATE
    assert "spec.privileged" in execution.message
    assert runtime.created == []


async def test_a_run_queued_before_the_restart_is_refused_when_it_would_start(
    make_executor: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    # No slot: the execution stays pending across the restart.
    before = make_executor(SPEC, host_policy=ALLOWED, node_limit=0)
    pending = await before.trigger(SPEC.name, CALLER)
    assert pending.status is Status.PENDING
    await before.close()
    restarted = make_executor(host_policy=HostPolicy())
    await restarted.start()
    refused = restarted.get_execution(pending.id)
    assert refused.status is Status.FAILED
    assert "spec.privileged" in refused.message
    assert runtime.created == []


async def test_a_run_the_flags_allow_starts(
    make_executor: Callable[..., Executor], runtime: FakeRuntime
) -> None:
    allowed = make_executor(SPEC, host_policy=ALLOWED)
    execution = await allowed.trigger(SPEC.name, CALLER)
    assert execution.status is not Status.FAILED
