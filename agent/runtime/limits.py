"""What bounds every job unless its spec says otherwise, and where job cgroups live.

Every container's cgroup is made under one parent (`jobagent` by default), so that a
node-wide ceiling (pids.max, memory.max, cpu.max) written once on that parent holds for
all jobs together, whatever each job asks for.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from agent.domain import Resources
from agent.errors import InvalidSpec

DEFAULT_PIDS_LIMIT = 4096
DEFAULT_TMP_SIZE = 64 * 1024**2
DEFAULT_CGROUP_PARENT = "jobagent"
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@:-]*$")


@dataclass(frozen=True)
class JobLimits:
    """Defaults for jobs whose spec sets no limit (None: no default) and the cgroup parent,
    a path below the cgroup root such as `jobagent` or `jobagent.slice/jobs`."""

    pids_limit: int | None = DEFAULT_PIDS_LIMIT
    tmp_size_bytes: int | None = DEFAULT_TMP_SIZE
    cgroup_parent: str = DEFAULT_CGROUP_PARENT

    def check(self) -> None:
        """Raises InvalidSpec naming the first setting that cannot work."""
        if self.pids_limit is not None and self.pids_limit < 1:
            raise InvalidSpec("default_pids_limit", "must be at least 1 (or 0 for none)")
        if self.tmp_size_bytes is not None and self.tmp_size_bytes < 1:
            raise InvalidSpec("default_tmp_size", "must be positive (or 0 for no size)")
        parts = self.cgroup_parent.strip("/").split("/")
        if not all(_SEGMENT.match(part) for part in parts):
            raise InvalidSpec(
                "cgroup_parent",
                f"{self.cgroup_parent!r} is not a cgroup path such as jobagent or "
                "jobagent.slice/jobs",
            )

    def cgroups_path(self, container_id: str) -> str:
        """The runtime-spec cgroupsPath of a container: absolute, below the parent."""
        return f"/{self.cgroup_parent.strip('/')}/{container_id}"

    def resources(self, requested: Resources) -> Resources:
        """The job's resources with the default pids limit where it sets none."""
        if requested.pids_limit is not None or self.pids_limit is None:
            return requested
        return dataclasses.replace(requested, pids_limit=self.pids_limit)
