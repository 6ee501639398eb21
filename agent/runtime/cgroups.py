"""Reading what the kernel recorded in a container's cgroup (v1, v2 or hybrid hosts)."""

from __future__ import annotations

from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def oom_kill_count(cgroups_path: str, root: Path = CGROUP_ROOT) -> int:
    """How many processes the kernel's OOM killer killed in the cgroup (0 if unknown).

    Looks at the v2 memory.events and the v1 memory.oom_control, since a hybrid host
    may put the memory controller on either hierarchy.
    """
    relative = cgroups_path.lstrip("/")
    candidates = [
        (root / relative / "memory.events", "oom_kill"),
        (root / "unified" / relative / "memory.events", "oom_kill"),
        (root / "memory" / relative / "memory.oom_control", "oom_kill"),
    ]
    count = 0
    for path, key in candidates:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                count = max(count, int(value))
    return count
