"""The default seccomp profile: the allowlist of seccomp_rules, fitted to one job.

Every syscall not allowed fails with EPERM. Which rules apply depends on the machine
(x86_64 or aarch64), the kernel and the job's capabilities: a job that was granted
CAP_SYS_ADMIN may also mount and make namespaces, one with CAP_SYS_PTRACE may trace, and
so on, as in the moby/containerd default profile.

runc and crun read a masked comparison as libseccomp orders it (value is the mask,
valueTwo the datum), as moby's profile is written; youki reads it the other way round.
The profile is written in each runtime's reading: given moby's, youki would allow clone
with every namespace flag.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Collection
from typing import Any

from agent.runtime.seccomp_rules import ARCHITECTURES, EPERM, ERRNO, MASKED_EQ, RULES, Arg, Rule

# Runtimes that take a masked comparison's mask from valueTwo and its datum from value.
MASK_IN_VALUE_TWO = frozenset({"youki"})


def default_profile(
    capabilities: Collection[str],
    runtime: str = "runc",
    machine: str | None = None,
    kernel: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The runtime-spec `linux.seccomp` of an unprivileged job holding `capabilities`
    (CAP_ names), for `runtime` (its name) on `machine` with `kernel` (this host's when
    not given)."""
    machine = machine or platform.machine()
    kernel = kernel or kernel_version()
    held = frozenset(capabilities)
    swap = runtime in MASK_IN_VALUE_TWO
    syscalls = [_syscall(rule, swap) for rule in RULES if _applies(rule, held, machine, kernel)]
    return {
        "defaultAction": ERRNO,
        "defaultErrnoRet": EPERM,
        "architectures": list(ARCHITECTURES.get(machine, ())),
        "syscalls": syscalls,
    }


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as 6.1.0-18-amd64 (this host's)."""
    found = re.match(r"(\d+)\.(\d+)", release or platform.release())
    return (int(found[1]), int(found[2])) if found else (0, 0)


def _applies(rule: Rule, held: frozenset[str], machine: str, kernel: tuple[int, int]) -> bool:
    return (
        (not rule.machines or machine in rule.machines)
        and rule.needs <= held
        and not rule.unless & held
        and (rule.min_kernel is None or kernel >= rule.min_kernel)
    )


def _syscall(rule: Rule, swap_mask: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"names": list(rule.names), "action": rule.action}
    if rule.errno is not None:
        entry["errnoRet"] = rule.errno
    if rule.args:
        entry["args"] = [_arg(arg, swap_mask) for arg in rule.args]
    return entry


def _arg(arg: Arg, swap_mask: bool) -> dict[str, Any]:
    value, value_two = arg.value, arg.value_two
    if swap_mask and arg.op == MASKED_EQ:
        value, value_two = value_two, value
    return {"index": arg.index, "value": value, "valueTwo": value_two, "op": arg.op}
