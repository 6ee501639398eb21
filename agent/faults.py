"""Test-only fault points: failures the end-to-end tests inject into a real agent process.

Inert unless the environment variable JOBAGENT_FAULTS is set; no flag or setting reaches
it, and an agent in production never sets it. Its value is a comma-separated script of
`point:action:count` steps, played in order for each point:

    JOBAGENT_FAULTS=scheduler:pass:1,scheduler:raise:3

lets the scheduler's first tick pass, makes the next three raise, then stays inert.
Actions: `pass` (nothing happens), `raise` (InjectedFault) and `kill` (SIGKILL to the
agent's own process at once, as a crash or the OOM killer would: the tests then restart
it on the same data directory). Points: `scheduler` (each cron tick), `retention` (each
retention round), `image-gc` (each image budget round), `store-sync` (each pass of the
store's sync), and the steps of a run where a crash leaves the most to clean up: `pull`
(an image copied into its staging layout, not yet in the store), `created` (a container
created, its process not started), `started` (its process started, RUNNING not yet
recorded) and `removing` (a container deleted from the runtime, its bundle still mounted).
"""

from __future__ import annotations

import os
import signal
from collections import deque

VARIABLE = "JOBAGENT_FAULTS"
ACTIONS = ("pass", "raise", "kill")


class InjectedFault(RuntimeError):
    """The failure a `raise` step injects."""


def parse(text: str) -> dict[str, deque[str]]:
    """The script of each point: one action per hit. ValueError names a bad step."""
    scripts: dict[str, deque[str]] = {}
    for step in filter(None, (part.strip() for part in text.split(","))):
        parts = step.split(":")
        point, action, count = parts if len(parts) == 3 else ("", "", "")
        if not point or action not in ACTIONS or not count.isdigit():
            raise ValueError(f"{VARIABLE}: {step!r} is not point:pass|raise|kill:count")
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
    """Plays the next step of `point`'s script: raises InjectedFault for a `raise` step,
    and for a `kill` step ends the process with SIGKILL (nothing after it runs: no
    finally block, no atexit, no flush)."""
    script = _scripts.get(point)
    if not script:
        return
    action = script.popleft()
    if action == "raise":
        raise InjectedFault(f"injected fault at {point} ({VARIABLE})")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
