"""The default seccomp profile: every syscall is allowed but those a job never needs and
that reach past its container (kernel modules, mounts, namespaces, keyrings, tracing
other processes, clocks, reboot), which fail with EPERM.

A deny list rather than Docker's allow list: short enough to read, and it cannot break a
job that uses a syscall newer than the list.
"""

from __future__ import annotations

import platform
from typing import Any

DENIED = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "delete_module",
    "finit_module", "fsconfig", "fsmount", "fsopen", "fspick", "init_module", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mount", "mount_setattr",
    "move_mount", "name_to_handle_at", "open_by_handle_at", "open_tree", "perf_event_open",
    "pivot_root", "process_vm_readv", "process_vm_writev", "ptrace", "quotactl", "reboot",
    "request_key", "setns", "settimeofday", "swapoff", "swapon", "syslog", "umount2",
    "unshare", "userfaultfd",
)  # fmt: skip
# Syscalls of x86 that other architectures lack.
DENIED_X86 = ("ioperm", "iopl", "create_module", "get_kernel_syms", "query_module",
              "nfsservctl", "uselib", "_sysctl", "ustat", "sysfs")  # fmt: skip
ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}
EPERM = 1


def default_profile(machine: str | None = None) -> dict[str, Any]:
    """The runtime-spec `linux.seccomp` of an unprivileged job on this machine."""
    machine = machine or platform.machine()
    names = [*DENIED, *(DENIED_X86 if machine == "x86_64" else ())]
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ARCHITECTURES.get(machine, []),
        "syscalls": [{"names": sorted(names), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}],
    }
