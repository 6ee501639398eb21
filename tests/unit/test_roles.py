"""Every RPC has an explicit role, anything unknown needs admin, viewers see env names but
not their values, and a request_id belongs to the caller that used it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from jobagent.v1 import job_service_pb2, jobs_pb2

from agent.api.auth import METHOD_ROLES, SERVICE_PREFIX, Role, required_role
from agent.api.identity import TOKEN_NAME, caller_identity
from agent.api.redact import REDACTED, redacted, redacted_yaml
from agent.domain import (
    Execution,
    ImageSpec,
    JobSpec,
    Status,
    Trigger,
    TriggerKind,
    TriggerRequest,
)
from agent.executor import Executor
from agent.store import Store
from tests.unit.fake_runtime import FakeRuntime


def test_every_rpc_of_the_service_has_an_explicit_role() -> None:
    service = job_service_pb2.DESCRIPTOR.services_by_name["JobService"]
    methods = {method.name for method in service.methods}
    assert methods - set(METHOD_ROLES) == set()
    assert set(METHOD_ROLES) - methods == set()


@pytest.mark.parametrize(
    "method",
    [
        f"{SERVICE_PREFIX}DeleteEverything",
        "/jobagent.v2.JobService/GetJob",
        "/grpc.channelz.v1.Channelz/GetServers",
        "",
    ],
)
def test_a_method_missing_from_the_table_needs_admin(method: str) -> None:
    assert required_role(method) is Role.ADMIN


def test_reads_need_viewer_and_health_nothing() -> None:
    assert required_role(f"{SERVICE_PREFIX}ListJobs") is Role.VIEWER
    assert required_role(f"{SERVICE_PREFIX}WatchEvents") is Role.VIEWER
    assert required_role("/grpc.health.v1.Health/Check") is None


SPEC_YAML = (
    "version: v1\ndeployment: d\nservices:\n  backup:\n    rtype: job\n"
    "    image: {name: busybox}\n    env: {PASSWORD: hunter2, USER: me}\n"
)


def test_a_viewer_sees_env_names_and_not_values_and_the_original_is_untouched() -> None:
    job = jobs_pb2.Job(name="backup", spec_yaml=SPEC_YAML)
    job.spec.env["PASSWORD"] = "hunter2"
    seen = redacted(job)
    assert dict(seen.spec.env) == {"PASSWORD": REDACTED}
    assert "hunter2" not in seen.spec_yaml and "PASSWORD" in seen.spec_yaml
    assert "me" not in seen.spec_yaml.split()
    assert job.spec.env["PASSWORD"] == "hunter2" and job.spec_yaml == SPEC_YAML
    response = job_service_pb2.ListJobsResponse(jobs=[job])
    assert dict(redacted(response).jobs[0].spec.env) == {"PASSWORD": REDACTED}


def test_a_triggers_dispatch_env_is_redacted_too() -> None:
    execution = jobs_pb2.Execution(id="e")
    execution.dispatch.env["TOKEN"] = "s3cret"
    execution.dispatch.args.append("visible")
    seen = redacted(execution)
    assert dict(seen.dispatch.env) == {"TOKEN": REDACTED}
    assert list(seen.dispatch.args) == ["visible"]
    event = job_service_pb2.WatchEventsResponse(event=jobs_pb2.ExecutionEvent(execution=execution))
    assert dict(redacted(event).event.execution.dispatch.env) == {"TOKEN": REDACTED}


def test_a_message_without_env_values_is_passed_as_it_is() -> None:
    execution = jobs_pb2.Execution(id="e", job_name="backup")
    assert redacted(execution) is execution
    job = jobs_pb2.Job(name="b", spec_yaml="version: v1\nservices: {b: {rtype: job}}\n")
    assert redacted(job) is job


async def test_a_request_id_is_scoped_to_its_caller(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    executor = Executor(store, FakeRuntime(), tmp_path / "logs", node_limit=0)
    executor.register_jobs([JobSpec(name="backup", image=ImageSpec("busybox"))], "", False)
    trigger = Trigger(TriggerKind.ENDPOINT)
    try:
        first = await executor.trigger("backup", trigger, TriggerRequest("r1", caller="token:a"))
        again = await executor.trigger("backup", trigger, TriggerRequest("r1", caller="token:a"))
        other = await executor.trigger("backup", trigger, TriggerRequest("r1", caller="token:b"))
        anonymous = await executor.trigger("backup", trigger, TriggerRequest("r1"))
        assert again.id == first.id
        assert len({first.id, other.id, anonymous.id}) == 3
        found = store.find_request("r1", "token:b")
        assert found is not None and found[0] == other.id
    finally:
        await executor.close()
        store.close()


class FakeContext:
    """What a servicer context tells of the peer's TLS certificate."""

    def __init__(self, properties: dict[str, list[bytes]]) -> None:
        self._properties = properties

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._properties


def test_the_caller_is_the_token_else_the_certificate_else_everyone_unnamed() -> None:
    certificate = FakeContext({"x509_subject_name": [b"CN=scheduler"]})
    assert caller_identity(certificate) == "cert:CN=scheduler"
    assert caller_identity(FakeContext({})) == ""
    TOKEN_NAME.set("ci")
    try:
        assert caller_identity(certificate) == "token:ci"
    finally:
        TOKEN_NAME.set("")


def test_a_store_of_node_wide_request_ids_is_migrated_to_per_caller(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.executescript(
            "DROP INDEX trigger_requests_by_caller;"
            "ALTER TABLE trigger_requests DROP COLUMN caller;"
            "CREATE UNIQUE INDEX trigger_requests_by_id ON trigger_requests (request_id) "
            "WHERE request_id != '';"
            # As every database of an agent before numbered migrations.
            "PRAGMA user_version = 0;"
        )
    db.close()
    store = Store(path)
    try:
        for number, caller in enumerate(("token:a", "token:b")):
            execution = Execution(
                id=f"{number:032x}",
                job_name="backup",
                status=Status.PENDING,
                trigger=Trigger(TriggerKind.ENDPOINT),
                container_id=f"c{number}",
                created_at=datetime.now(UTC),
            )
            store.insert_execution(execution, TriggerRequest("r1", caller=caller), "f")
        assert store.find_request("r1", "token:b") == (f"{1:032x}", "f")
    finally:
        store.close()


@pytest.mark.parametrize(
    "document",
    [
        # The env written once under another top-level field, and named by an alias.
        "api: {shared: &secrets {PASSWORD: hunter2}}\nservices:\n  b:\n    env: *secrets\n",
        # One value written elsewhere and named by an alias.
        "api: {p: &pw hunter2}\nservices:\n  b:\n    env: {PASSWORD: *pw}\n",
        # Merged into the env, or into the service that has the env.
        "api: {base: &base {PASSWORD: hunter2}}\nservices:\n  b:\n    env: {<<: *base, A: b}\n",
        "api: {s: &s {env: {PASSWORD: hunter2}}}\nservices:\n  b:\n    <<: *s\n    rtype: job\n",
        "api: {s: &s {env: {PASSWORD: hunter2}}}\nservices:\n  b: {<<: [{rtype: job}, *s]}\n",
    ],
)
def test_an_env_value_named_through_an_anchor_is_hidden_wherever_it_is_written(
    document: str,
) -> None:
    text = "version: v1\ndeployment: d\n" + document
    hidden = redacted_yaml(text)
    assert "hunter2" not in hidden
    loaded = yaml.safe_load(hidden)
    assert loaded["services"]["b"]["env"]["PASSWORD"] == REDACTED
    assert yaml.safe_load(text)["services"]["b"]["env"]["PASSWORD"] == "hunter2"


def test_a_value_that_merely_equals_an_env_value_stays_and_cycles_end() -> None:
    text = (
        "version: v1\ndeployment: d\napi: {loop: &loop [*loop]}\nservices:\n"
        "  b: {rtype: job, backoff_limit: 3, env: {RETRIES: '3', N: [*loop]}}\n"
    )
    loaded = yaml.safe_load(redacted_yaml(text))
    assert loaded["services"]["b"]["backoff_limit"] == 3
    assert loaded["services"]["b"]["env"]["RETRIES"] == REDACTED
    assert redacted_yaml("services: [") == REDACTED
    assert redacted_yaml("- a list") == REDACTED


def test_an_env_under_a_key_written_twice_is_hidden_whichever_the_loader_keeps() -> None:
    for text in (
        "services: {}\nservices:\n  b: {rtype: job, env: {PASSWORD: hunter2}}\n",
        "<<: {services: {b: {env: {PASSWORD: decoy}}}}\n"
        "services:\n  b: {rtype: job, env: {PASSWORD: hunter2}}\n",
        "services:\n  b: {env: {PASSWORD: decoy}}\n  b: {env: {PASSWORD: hunter2}}\n",
        "services:\n  b: {env: {PASSWORD: decoy}, env: {PASSWORD: hunter2}}\n",
    ):
        assert yaml.safe_load(text)["services"]["b"]["env"]["PASSWORD"] == "hunter2"
        hidden = redacted_yaml(text)
        assert "hunter2" not in hidden and "decoy" not in hidden, text
