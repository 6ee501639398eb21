"""Per-job defaults and the cgroup parent."""

from __future__ import annotations

import pytest

from agent.cli import build_parser
from agent.domain import Resources
from agent.errors import InvalidSpec
from agent.runtime.limits import JobLimits
from agent.settings import config_from_args


def limits_of(*flags: str) -> JobLimits:
    return config_from_args(build_parser().parse_args(["serve", *flags])).limits


def test_the_defaults_bound_every_job_that_sets_no_limit() -> None:
    limits = limits_of()
    assert (limits.pids_limit, limits.tmp_size_bytes) == (4096, 64 << 20)
    assert limits.resources(Resources(cpu=1.0)) == Resources(cpu=1.0, pids_limit=4096)
    assert limits.resources(Resources(pids_limit=10_000)).pids_limit == 10_000
    assert limits.cgroups_path("c1") == "/jobagent/c1"


def test_flags_change_or_turn_off_the_defaults() -> None:
    limits = limits_of(
        "--default-pids-limit",
        "0",
        "--default-tmp-size",
        "0",
        "--cgroup-parent",
        "/jobagent.slice/jobs/",
    )
    assert (limits.pids_limit, limits.tmp_size_bytes) == (None, None)
    assert limits.resources(Resources()) == Resources()
    assert limits.cgroups_path("c1") == "/jobagent.slice/jobs/c1"
    limits.check()


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        (JobLimits(pids_limit=-1), "default_pids_limit"),
        (JobLimits(cgroup_parent="../escape"), "cgroup_parent"),
        (JobLimits(cgroup_parent="a//b"), "cgroup_parent"),
        (JobLimits(cgroup_parent=""), "cgroup_parent"),
    ],
)
def test_bad_settings_are_named(limits: JobLimits, field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        limits.check()
    assert caught.value.field == field
