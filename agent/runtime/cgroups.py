"""Reading what the kernel recorded in a container's cgroup (v1, v2 or hybrid hosts)."""

from __future__ import annotations

from pathlib import Path

from agent.hostfs import read_small_file

CGROUP_ROOT = Path("/sys/fs/cgroup")


def oom_kill_count(cgroups_path: str, root: Path = CGROUP_ROOT) -> int:
    """How many processes the kernel's OOM killer killed in the cgroup (0 if unknown).

    Looks at the v2 memory.events and the v1 memory.oom_control, since a hybrid host
    may put the memory controller on either hierarchy.
    """
    relative = cgroups_path.lstrip("/")
    candidates = (
        f"{root}/{relative}/memory.events",
        f"{root}/unified/{relative}/memory.events",
        f"{root}/memory/{relative}/memory.oom_control",
    )
    count = 0
    for path in candidates:
        try:
            lines = read_small_file(path).splitlines()
        except OSError:
            continue
        for line in lines:
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                count = max(count, int(value))
    return count
