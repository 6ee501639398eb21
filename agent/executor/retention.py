"""Retention: finished executions go, with their records and logs, by age and by count."""

from __future__ import annotations

import asyncio
import logging
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.domain import Status
from agent.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    """How long finished executions are kept; active ones are always kept."""

    max_age_seconds: float = 3600
    per_job: int = 100
    interval_seconds: float = 60.0
    # Unused images go, least recently used first, while the image store is larger.
    image_budget_bytes: int | None = None


class Retention:
    """Removes what the policy no longer keeps: records, events, attempts and log files.

    Job events (registrations, skipped and missed runs) go by age alone.
    """

    def __init__(self, store: Store, log_dir: Path, policy: RetentionPolicy) -> None:
        self._store = store
        self._log_dir = log_dir
        self.policy = policy

    async def prune_history(self, job_name: str, succeeded: int, failed: int) -> list[str]:
        """Keeps the newest `succeeded` completed and `failed` failed or cancelled runs."""
        kept = {Status.COMPLETED: succeeded, Status.FAILED: failed, Status.CANCELLED: failed}
        seen = {Status.COMPLETED: 0, Status.FAILED: 0}
        expired = []
        for execution in self._store.job_history(job_name):
            bucket = Status.COMPLETED if execution.status is Status.COMPLETED else Status.FAILED
            seen[bucket] += 1
            if seen[bucket] > kept[execution.status]:
                expired.append(execution.id)
        await self._remove(expired)
        return expired

    async def _remove(self, expired: list[str]) -> None:
        """Deletes the records, then the log files in a worker thread (a large log tree
        would hold the event loop)."""
        if expired:
            self._store.delete_executions(expired)
            directories = [self._log_dir / execution_id for execution_id in expired]
            await asyncio.to_thread(_remove_trees, directories)

    async def prune(self) -> list[str]:
        """Removes every expired execution now; returns their ids."""
        older_than = datetime.now(UTC) - timedelta(seconds=self.policy.max_age_seconds)
        expired = self._store.expired_executions(older_than, self.policy.per_job)
        await self._remove(expired)
        if expired:
            log.info("retention removed %d finished executions", len(expired))
        self._store.delete_job_events(older_than)
        return expired


def _remove_trees(directories: list[Path]) -> None:
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
