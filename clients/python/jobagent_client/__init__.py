"""Python client of the jobagent node agent: a typed layer over the generated stubs."""

from jobagent_client.client import ClientError, JobAgentClient, PlainTextToken
from jobagent_client.models import (
    Execution,
    ExecutionEvent,
    Job,
    JobEvent,
    LogBatch,
    LogChunk,
    LogLine,
)

__all__ = [
    "ClientError",
    "Execution",
    "ExecutionEvent",
    "Job",
    "JobAgentClient",
    "JobEvent",
    "LogBatch",
    "LogChunk",
    "LogLine",
    "PlainTextToken",
]
