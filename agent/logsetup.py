"""The agent's own log: text or JSON lines, each naming the execution it is about.

An ExecutionRun sets `current_execution` in its task, so every line logged while it works
(by any module) carries the execution id without passing it around.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime

current_execution: contextvars.ContextVar[str] = contextvars.ContextVar(
    "current_execution", default=""
)
FORMATS = ("text", "json")


class ExecutionContext(logging.Filter):
    """Adds `execution_id` (possibly empty) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Never drops a record."""
        if not getattr(record, "execution_id", ""):
            record.execution_id = current_execution.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, execution_id, error."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        execution_id = getattr(record, "execution_id", "")
        if execution_id:
            entry["execution_id"] = execution_id
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(logging.Formatter):
    """Plain lines, with `[execution <id>]` when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as a line of text."""
        line = super().format(record)
        execution_id = getattr(record, "execution_id", "")
        return f"{line} [execution {execution_id}]" if execution_id else line


def configure(log_format: str = "text", level: int = logging.INFO) -> None:
    """Sends the agent's log to stderr in `log_format` (text or json)."""
    handler = logging.StreamHandler()
    handler.addFilter(ExecutionContext())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
