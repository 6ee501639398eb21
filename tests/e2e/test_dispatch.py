"""Dispatch parameters, idempotent triggers, pages of jobs and request checks, for real."""

from __future__ import annotations

import uuid

import grpc
import pytest
from jobagent_client import ClientError, JobAgentClient

PARAMETERIZED = """\
version: v1
deployment: dispatch
services:
  greet:
    rtype: job
    image: {name: busybox:latest}
    env: {GREETING: hello}
    command:
      entrypoint: [/bin/sh, -c, 'echo "$GREETING $WHO $*"; cat /in/payload || true', sh, fixed]
    dispatch:
      payload: optional
      payload_path: /in/payload
      env: [GREETING]
      required_env: [WHO]
      args: true
"""


def output(client: JobAgentClient, execution_id: str) -> list[str]:
    return [line.message for line in client.logs(execution_id)]


def test_args_env_and_payload_reach_the_container(client: JobAgentClient) -> None:
    client.register(PARAMETERIZED, replace=True)
    execution = client.trigger(
        "greet", args=["one", "two"], env={"WHO": "world"}, payload=b"payload line\n"
    )
    done = client.wait(execution.id)
    assert done.status == "completed", done.message
    assert output(client, execution.id) == ["hello world fixed one two", "payload line"]
    shown = client.get_execution(execution.id)
    assert (shown.args, dict(shown.env), shown.payload_size) == (
        ("one", "two"),
        {"WHO": "world"},
        13,
    )


def test_a_parameter_the_job_does_not_allow_is_invalid_argument_naming_it(
    client: JobAgentClient,
) -> None:
    client.register(PARAMETERIZED, replace=True)
    for env, field in (({"WHO": "x", "PATH": "/"}, "env.PATH"), ({}, "env.WHO")):
        with pytest.raises(ClientError) as caught:
            client.trigger("greet", env=env)
        assert (caught.value.code, caught.value.field) == (grpc.StatusCode.INVALID_ARGUMENT, field)
    with pytest.raises(ClientError) as caught:
        client.trigger("greet", env={"WHO": "x"}, payload=b"x" * 20000)
    assert caught.value.field == "payload"
    assert all(not e.terminal or e.status == "completed" for e in client.list_executions("greet"))


def test_a_repeated_request_id_returns_the_first_execution(client: JobAgentClient) -> None:
    client.register(PARAMETERIZED, replace=True)
    request_id = str(uuid.uuid4())
    before = len(client.list_executions("greet"))
    first = client.trigger("greet", request_id=request_id, env={"WHO": "once"})
    again = client.trigger("greet", request_id=request_id, env={"WHO": "once"})
    assert again.id == first.id
    assert client.wait(first.id).status == "completed"
    assert client.trigger("greet", request_id=request_id, env={"WHO": "once"}).id == first.id
    assert len(client.list_executions("greet")) == before + 1
    assert client.get_execution(first.id).request_id == request_id
    with pytest.raises(ClientError) as caught:
        client.trigger("greet", request_id=request_id, env={"WHO": "twice"})
    assert (caught.value.code, caught.value.field) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "request_id",
    )


def test_ids_and_names_that_could_reach_a_path_are_refused(client: JobAgentClient) -> None:
    for call, field in (
        (lambda: client.get_execution("../../etc/passwd"), "id"),
        (lambda: list(client.logs("../" + "0" * 29)), "execution_id"),
        (lambda: client.cancel("0" * 31 + "/"), "id"),
        (lambda: client.get_job("../jobs"), "name"),
        (lambda: client.trigger("a/b"), "job_name"),
        (lambda: client.list_executions("..")[0], "job_name"),
    ):
        with pytest.raises(ClientError) as caught:
            call()
        assert (caught.value.code, caught.value.field) == (grpc.StatusCode.INVALID_ARGUMENT, field)


def test_jobs_come_in_pages_by_name_stable_under_registrations(client: JobAgentClient) -> None:
    names = [f"paged-job-{index}" for index in range(5)]
    client.register(
        "version: v1\ndeployment: paged-jobs\nservices:\n"
        + "".join(
            f"  {name}:\n    rtype: job\n    image: {{name: busybox:latest}}\n" for name in names
        ),
        replace=True,
    )
    every = [job.name for job in client.list_jobs()]
    assert every == sorted(every) and set(names) <= set(every)
    first, token = client.list_jobs_page(page_size=2)
    client.register(
        "version: v1\ndeployment: paged-jobs-0\nservices:\n  aaa-first:\n"
        "    rtype: job\n    image: {name: busybox}\n",
        replace=True,
    )
    rest: list[str] = []
    while token:
        page, token = client.list_jobs_page(page_size=2, page_token=token)
        rest.extend(job.name for job in page)
    assert [job.name for job in first] + rest == every
    with pytest.raises(ClientError) as caught:
        client.list_jobs_page(page_token="ZTox")  # an executions token
    assert caught.value.field == "page_token"
