"""Parsing the seed's deployment YAML, and the field path of every rejection."""

from __future__ import annotations

import pytest

from agent.domain import (
    CommandSpec,
    HostPolicy,
    ImageSpec,
    JobKind,
    JobSpec,
    PullPolicy,
    RetryPolicy,
)
from agent.errors import InvalidSpec
from agent.spec import parse_document, validate_job_spec

BACKUP = """
version: v1
deployment: nightly-ops
services:
  backup:
    rtype: job
    image:
      name: busybox:latest
      pull_policy: if_not_present
    command:
      entrypoint: ["/bin/sh", "-c"]
      args: ["echo backup done"]
      workdir: /
    env:
      TARGET: /data
      RETRIES: 3
  web:
    image: {name: nginx}
    endpoints: []
"""


def test_a_job_document_becomes_a_job_spec_and_services_are_skipped() -> None:
    (spec,) = parse_document(BACKUP)
    assert spec == JobSpec(
        name="backup",
        deployment="nightly-ops",
        kind=JobKind.JOB,
        image=ImageSpec("busybox:latest", PullPolicy.IF_NOT_PRESENT),
        command=CommandSpec(("/bin/sh", "-c"), ("echo backup done",), "/"),
        env={"TARGET": "/data", "RETRIES": "3"},
    )


@pytest.mark.parametrize(
    "schedule", ["30 2 * * *", "*/2 * * * * * *", "0 0 12 * * MON-FRI *", "@daily"]
)
def test_cron_schedules_of_five_six_and_seven_fields_are_accepted(schedule: str) -> None:
    document = f"""
version: v1
deployment: reports
services:
  report:
    rtype: cron
    schedule: "{schedule}"
    image: {{name: busybox:latest}}
"""
    (spec,) = parse_document(document)
    assert (spec.kind, spec.schedule) == (JobKind.CRON, schedule)


def service(body: str) -> str:
    indented = "\n".join("    " + line for line in body.strip().splitlines())
    return f"version: v1\ndeployment: typo\nservices:\n  once:\n{indented}\n"


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ("version: v2\ndeployment: a\nservices: {}", "version"),
        ("deployment: a\nservices: {}", "version"),
        ("version: v1\ndeployment: Bad_Name\nservices: {}", "deployment"),
        ("version: v1\ndeployment: a\nservices: {}", "services"),
        ("version: v1\ndeployment: a\nextra: 1\nservices: {}", "extra"),
        ("version: v1\ndeployment: a\nservices:\n  Bad_Job:\n    rtype: job", "services.Bad_Job"),
        (service("rtype: job"), "services.once.image"),
        (service("rtype: job\nimage: {name: ''}"), "services.once.image.name"),
        (
            service("rtype: job\nimage: {name: a, pull_policy: sometimes}"),
            "services.once.image.pull_policy",
        ),
        (service("rtype: job\nimage: {name: a, tag: b}"), "services.once.image.tag"),
        (service("rtype: job\nimagee: {name: a}"), "services.once.imagee"),
        (
            service("rtype: job\nimage: {name: a}\ncommand: {entrypoint: 3}"),
            "services.once.command.entrypoint",
        ),
        (service("rtype: job\nimage: {name: a}\nenv: {1BAD: x}"), "services.once.env.1BAD"),
        (service("rtype: job\nimage: {name: a}\nschedule: '* * * * *'"), "services.once.schedule"),
        (service("rtype: cron\nimage: {name: a}"), "services.once.schedule"),
        (
            service("rtype: cron\nimage: {name: a}\nschedule: every tuesday"),
            "services.once.schedule",
        ),
        (service("rtype: batch\nimage: {name: a}"), "services.once.rtype"),
        (
            service("rtype: job\nimage: {name: a}\ninit: {steps: [{id: a, uses: init.nope}]}"),
            "services.once.init.steps[0].uses",
        ),
        (
            service("rtype: job\nimage: {name: a}\ninit: {steps: [{id: a, uses: init.wait_tcp}]}"),
            "services.once.init.steps[0].with.host",
        ),
        (
            service(
                "rtype: job\nimage: {name: a}\ninit: {steps: [{id: a, uses: init.sleep, "
                "with: {duration: 1s}, on_failure: explode}]}"
            ),
            "services.once.init.steps[0].on_failure",
        ),
        (
            service("rtype: job\nimage: {name: a}\nerrors: {on_panic: {action: restart}}"),
            "services.once.errors.on_panic",
        ),
        ("version: v1\ndeployment: [", "spec_yaml"),
        ("- a list", "spec_yaml"),
    ],
)
def test_bad_documents_name_the_field(document: str, field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_document(document)
    assert caught.value.field == field


def test_structured_specs_are_validated_like_yaml() -> None:
    with pytest.raises(InvalidSpec) as caught:
        validate_job_spec(JobSpec(name="ok", image=ImageSpec("")))
    assert caught.value.field == "spec.image.name"
    with pytest.raises(InvalidSpec) as caught:
        validate_job_spec(JobSpec(name="-bad", image=ImageSpec("a")))
    assert caught.value.field == "spec.name"
    validate_job_spec(JobSpec(name="ok", image=ImageSpec("a")))


@pytest.mark.parametrize(
    ("memory", "size"),
    [
        ("32Mi", 32 << 20),
        ("1Gi", 1 << 30),
        ("512M", 512_000_000),
        (8388608, 8 << 20),
        ("1.5Gi", 3 << 29),
    ],
)
def test_memory_sizes_parse_with_their_units(memory: object, size: int) -> None:
    (spec,) = parse_document(
        service(f"rtype: job\nimage: {{name: a}}\nresources: {{memory: {memory}}}")
    )
    assert spec.resources.memory_bytes == size


@pytest.mark.parametrize(
    ("resources", "field"),
    [
        ("{memory: lots}", "services.once.resources.memory"),
        ("{memory: 1Ki}", "services.once.resources.memory"),
        ("{cpu: 0}", "services.once.resources.cpu"),
        ("{cpu: fast}", "services.once.resources.cpu"),
        ("{pids_limit: -1}", "services.once.resources.pids_limit"),
        ("{gpu: {count: 1}}", "services.once.resources.gpu"),
        ("{disk: 1Gi}", "services.once.resources.disk"),
    ],
)
def test_bad_resources_name_the_field(resources: str, field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_document(service(f"rtype: job\nimage: {{name: a}}\nresources: {resources}"))
    assert caught.value.field == field


def test_user_and_labels_are_kept() -> None:
    (spec,) = parse_document(
        service("rtype: job\nimage: {name: a}\nuser: 'app:staff'\nlabels: {team: ops, n: 1}")
    )
    assert (spec.user, dict(spec.labels)) == ("app:staff", {"team": "ops", "n": "1"})
    with pytest.raises(InvalidSpec) as caught:
        parse_document(service("rtype: job\nimage: {name: a}\nuser: 'a b'"))
    assert caught.value.field == "services.once.user"


def test_timeout_and_stop_settings_parse() -> None:
    (spec,) = parse_document(
        service(
            "rtype: job\nimage: {name: a}\ntimeout: 1h30m\n"
            "stop_signal: usr1\nstop_grace_period: 500ms"
        )
    )
    assert (spec.timeout_seconds, spec.stop_signal, spec.stop_grace_seconds) == (
        5400.0,
        "SIGUSR1",
        0.5,
    )


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("timeout: soon", "services.once.timeout"),
        ("timeout: -5", "services.once.timeout"),
        ("timeout: .inf", "services.once.timeout"),
        (
            "init: {steps: [{id: nap, uses: init.sleep, with: {duration: .inf}}]}",
            "services.once.init.steps[0].with.duration",
        ),
        ("stop_signal: SIGNOPE", "services.once.stop_signal"),
        ("stop_grace_period: 2h", "services.once.stop_grace_period"),
    ],
)
def test_bad_timeouts_and_signals_name_the_field(line: str, field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_document(service(f"rtype: job\nimage: {{name: a}}\n{line}"))
    assert caught.value.field == field


def test_retry_settings_parse() -> None:
    (spec,) = parse_document(
        service(
            "rtype: job\nimage: {name: a}\nbackoff_limit: 4\nretry_policy: "
            "{initial_delay: 2s, max_delay: 1m, fail_exit_codes: [2], retry_exit_codes: [1]}"
        )
    )
    assert spec.retry == RetryPolicy(4, 2.0, 60.0, (2,), (1,))


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("backoff_limit: -1", "services.once.backoff_limit"),
        ("retry_policy: {fail_exit_codes: [0]}", "services.once.retry_policy.fail_exit_codes"),
        ("retry_policy: {initial_delay: soon}", "services.once.retry_policy.initial_delay"),
        ("retry_policy: {jitter: 1}", "services.once.retry_policy.jitter"),
    ],
)
def test_bad_retry_settings_name_the_field(line: str, field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_document(service(f"rtype: job\nimage: {{name: a}}\n{line}"))
    assert caught.value.field == field


def test_the_log_cap_parses_with_a_small_minimum() -> None:
    (spec,) = parse_document(service("rtype: job\nimage: {name: a}\nmax_log_size: 2Ki"))
    assert spec.max_log_bytes == 2048
    with pytest.raises(InvalidSpec) as caught:
        parse_document(service("rtype: job\nimage: {name: a}\nmax_log_size: 10"))
    assert caught.value.field == "services.once.max_log_size"


WAITS_FOR_A_DATABASE = """
rtype: job
image: {name: a}
init:
  steps:
    - {id: pause, uses: init.sleep, with: {duration: 1s}}
    - {id: db, uses: init.wait_tcp, with: {host: db.internal, port: 5432}}
"""


def test_a_wait_step_needs_host_network_since_it_probes_from_the_jobs_network() -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_document(service(WAITS_FOR_A_DATABASE))
    assert caught.value.field == "services.once.init.steps[1].uses"
    assert "host_network" in caught.value.reason
    (spec,) = parse_document(
        service(WAITS_FOR_A_DATABASE + "host_network: true"),
        HostPolicy(allow_host_network=True),
    )
    assert spec.host_network and len(spec.init_steps) == 2
