"""Typed domain errors. agent/api maps each to one gRPC status code, in one place."""

from __future__ import annotations


class AgentError(Exception):
    """Base of the errors a caller can cause or observe."""


class NotFound(AgentError):
    """The named job or execution does not exist."""


class AlreadyExists(AgentError):
    """A job of that name exists with a different spec."""


class InvalidSpec(AgentError):
    """A spec or request field is invalid; `field` is its path (services.backup.image)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class FailedPrecondition(AgentError):
    """The request is valid but the target is in the wrong state for it."""


class HostPolicyRefused(FailedPrecondition):
    """A registered job asks for what the agent's current flags do not allow (privileged,
    a capability, host networking, a bind source); `field` is its path (spec.privileged)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Unavailable(AgentError):
    """The agent cannot take the request now (shutting down, or its store is stalled)."""


class StoreUnwritable(AgentError):
    """The store cannot take a write now, and a later one may: the recorder keeps an
    execution's end in memory until it can be written."""


class OutOfRange(AgentError):
    """A resume point older than what the agent still holds: re-list, then watch."""


class ResourceExhausted(AgentError):
    """A bound was reached: too many open streams or pending executions (the message names
    the limit), or a watcher fell too far behind (it may resume from its last sequence)."""


class DiskFull(ResourceExhausted, StoreUnwritable):
    """The data directory's filesystem is full, or has less free space than the reserve."""


class StoreStalled(Unavailable, StoreUnwritable):
    """A write of the store waited too long for its database: a disk that does not finish
    a write, or another process holding a write transaction open."""


class Unauthenticated(AgentError):
    """The call carries no credential the agent knows."""


class PermissionDenied(AgentError):
    """The caller's role does not allow the call."""


class DataLoss(AgentError):
    """A stored record cannot be read (written by hand, or damaged); the rest still works."""
