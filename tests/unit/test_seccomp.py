"""The default seccomp profile: an allowlist fitted to the job's capabilities."""

from __future__ import annotations

from typing import Any

import pytest

from agent.runtime import seccomp_rules
from agent.runtime.bundle import DEFAULT_CAPABILITIES
from agent.runtime.seccomp import default_profile, kernel_version
from agent.runtime.seccomp_rules import ANY_NAMESPACE, ENOSYS, EPERM, NAMESPACE_FLAGS

Profile = dict[str, Any]


def profile(*extra: str, runtime: str = "runc", machine: str = "x86_64") -> Profile:
    return default_profile([*DEFAULT_CAPABILITIES, *extra], runtime, machine, (6, 1))


def unconditional(profile: Profile) -> set[str]:
    """Names allowed whatever their arguments."""
    return {
        name
        for rule in profile["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
        for name in rule["names"]
    }


def rules_for(profile: Profile, name: str) -> list[dict[str, Any]]:
    return [rule for rule in profile["syscalls"] if name in rule["names"]]


def test_everything_not_listed_fails_with_eperm() -> None:
    default = profile()
    assert (default["defaultAction"], default["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", EPERM)
    allowed = unconditional(default)
    assert {"read", "write", "execve", "fork", "wait4", "socketpair", "chroot"} <= allowed
    refused = """mount umount2 setns bpf kexec_load init_module add_key keyctl reboot
        clock_settime open_by_handle_at io_uring_setup io_uring_enter io_uring_register"""
    for name in refused.split():
        assert rules_for(default, name) == [], name


def test_namespaces_are_refused_to_clone_and_unshare_without_sys_admin() -> None:
    default = profile()
    for name in ("clone", "unshare"):
        (rule,) = rules_for(default, name)
        (arg,) = rule["args"]
        # Allowed only when (flags & every namespace flag) == 0.
        assert (arg["op"], arg["value"], arg["valueTwo"]) == (
            "SCMP_CMP_MASKED_EQ",
            ANY_NAMESPACE,
            0,
        )
    assert ANY_NAMESPACE & NAMESPACE_FLAGS["user"] and ANY_NAMESPACE & NAMESPACE_FLAGS["network"]
    (clone3,) = rules_for(default, "clone3")
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", ENOSYS)


def test_youki_gets_the_masked_comparison_in_its_own_reading() -> None:
    (rule,) = rules_for(profile(runtime="youki"), "clone")
    (arg,) = rule["args"]
    assert (arg["value"], arg["valueTwo"]) == (0, ANY_NAMESPACE)


def test_sys_admin_opens_its_group_and_drops_the_namespace_filters() -> None:
    admin = profile("CAP_SYS_ADMIN")
    allowed = unconditional(admin)
    assert set(seccomp_rules.SYS_ADMIN) <= allowed
    assert {"clone", "clone3", "unshare", "mount", "setns"} <= allowed
    assert not [rule for rule in admin["syscalls"] if rule["action"] != "SCMP_ACT_ALLOW"]
    assert all(
        "args" not in rule for name in ("clone", "unshare") for rule in rules_for(admin, name)
    )


@pytest.mark.parametrize(
    ("capability", "names"),
    [
        ("CAP_SYS_PTRACE", {"kcmp", "pidfd_getfd", "process_madvise"}),
        ("CAP_SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
        ("CAP_SYS_TIME", {"settimeofday", "clock_settime"}),
        ("CAP_SYS_BOOT", {"reboot"}),
        ("CAP_BPF", {"bpf"}),
        ("CAP_PERFMON", {"perf_event_open"}),
    ],
)
def test_each_capability_opens_its_group_only(capability: str, names: set[str]) -> None:
    assert not names & unconditional(profile())
    assert names <= unconditional(profile(capability))


def test_personality_is_limited_to_the_values_moby_allows() -> None:
    rules = rules_for(profile(), "personality")
    values = {rule["args"][0]["value"] for rule in rules}
    assert values == {0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF}
    assert all(rule["args"][0]["op"] == "SCMP_CMP_EQ" for rule in rules)


def test_architectures_and_machine_specific_calls() -> None:
    x86 = profile(machine="x86_64")
    arm = profile(machine="aarch64")
    assert x86["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert "arch_prctl" in unconditional(x86) and "arch_prctl" not in unconditional(arm)
    assert "set_tls" in unconditional(arm) and "set_tls" not in unconditional(x86)


def test_ptrace_follows_moby_from_kernel_4_8() -> None:
    old = default_profile(DEFAULT_CAPABILITIES, "runc", "x86_64", (4, 4))
    assert "ptrace" not in unconditional(old) and "ptrace" in unconditional(profile())
    assert kernel_version("6.1.0-18-amd64") == (6, 1) and kernel_version("weird") == (0, 0)


def test_no_rule_has_two_conditions_which_runtimes_would_read_differently() -> None:
    assert all(len(rule.args) <= 1 for rule in seccomp_rules.RULES)
