"""Stored jobs that today's validator refuses (written by an older version, or by hand).

Such a row still reads (GetJob and ListJobs show it), but running it would run a spec no
validator accepted: the executor suspends it at start (see Executor.suspend_invalid_jobs)
until it is registered again.
"""

from __future__ import annotations

from agent.domain import HostPolicy, JobSpec
from agent.privileges import ALL_CAPABILITIES
from agent.spec import validate_job_spec

# What the agent's flags allow (bind sources, host networking, privileges) is checked at
# every run against the flags of that moment, and refuses that run only; so a stored job
# is checked here as if the flags allowed every host access.
ANY_HOST_ACCESS = HostPolicy(
    bind_allowlist=("/",),
    allow_host_network=True,
    allow_privileged=True,
    allowed_capabilities=frozenset(ALL_CAPABILITIES),
)


def stored_spec_problem(spec: JobSpec) -> str | None:
    """Why today's validator refuses a stored spec (its field path and reason), or None."""
    try:
        validate_job_spec(spec, ANY_HOST_ACCESS)
    except Exception as error:  # a stored row can hold what no parser would make
        return str(error) or repr(error)
    return None
