"""Test-only fault points: failures the end-to-end tests inject into a real agent process.

Inert unless the environment variable JOBAGENT_FAULTS is set; no flag or setting reaches
it, and an agent in production never sets it. Its value is a comma-separated script of
`point:action:count` steps, played in order for each point:

    JOBAGENT_FAULTS=scheduler:pass:1,scheduler:raise:3

lets the scheduler's first tick pass, makes the next three raise, then stays inert.
Actions: `pass` (nothing happens) and `raise` (InjectedFault). Points: `scheduler` (each
cron tick), `retention` (each retention round), `image-gc` (each image budget round).
"""

from __future__ import annotations

import os
from collections import deque

VARIABLE = "JOBAGENT_FAULTS"
ACTIONS = ("pass", "raise")


class InjectedFault(RuntimeError):
    """The failure a `raise` step injects."""


def parse(text: str) -> dict[str, deque[str]]:
    """The script of each point: one action per hit. ValueError names a bad step."""
    scripts: dict[str, deque[str]] = {}
    for step in filter(None, (part.strip() for part in text.split(","))):
        parts = step.split(":")
        point, action, count = parts if len(parts) == 3 else ("", "", "")
        if not point or action not in ACTIONS or not count.isdigit():
            raise ValueError(f"{VARIABLE}: {step!r} is not point:pass|raise:count")
        scripts.setdefault(point, deque()).extend([action] * int(count))
    return scripts


_scripts: dict[str, deque[str]] = {}


def load(text: str | None = None) -> None:
    """Replaces every script with `text`'s (the environment's by default)."""
    scripts = parse(os.environ.get(VARIABLE, "") if text is None else text)
    _scripts.clear()
    _scripts.update(scripts)


load()


def hit(point: str) -> None:
    """Plays the next step of `point`'s script: raises InjectedFault for a `raise` step."""
    script = _scripts.get(point)
    if script and script.popleft() == "raise":
        raise InjectedFault(f"injected fault at {point} ({VARIABLE})")
