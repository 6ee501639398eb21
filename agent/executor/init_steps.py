"""Init steps: the waits and commands that run before a job's container starts.

wait_tcp and wait_http probe from the job's network namespace. Only a job with
host_network has a network beyond loopback, and its namespace is the host's, the
agent's own: so the agent probes itself, and refuses the waits of any other job (spec
validation refuses them at registration; a stored spec is checked again here). sleep
runs in the agent; init.run runs in a container of the job's image through a callback,
never on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Sequence

from agent.domain import EventKind, InitAction, InitStep, StepFailure

POLL_SECONDS = 0.2
RETRY_DELAY_SECONDS = 1.0

# Runs `argv` in a container of the job's image within `timeout` seconds; returns its exit code.
RunInContainer = Callable[[InitStep, Sequence[str], float], Awaitable[int]]
# Records one step event: kind, step id, message.
Report = Callable[[EventKind, str, str], None]


class StepFailed(Exception):
    """An init step did not succeed; the message says why."""


async def run_steps(
    steps: Sequence[InitStep], run: RunInContainer, report: Report, *, host_network: bool
) -> str | None:
    """Runs the steps in order. Returns why the sequence failed, or None when it may go on.

    A step that fails with on_failure `warn` or `continue` lets the sequence go on; a
    `warn` says so in the step's failure event. `host_network`: the job shares the host's
    network namespace (without it, a wait fails without probing).
    """
    for step in steps:
        report(EventKind.INIT_STEP_STARTED, step.id, f"{step.action.value} started")
        try:
            if step.action.probes_network and not host_network:
                raise StepFailed("a wait needs host_network: the job's own network is loopback")
            attempts = await _run_with_retries(step, run)
        except StepFailed as failure:
            reason = f"init step {step.id} failed: {failure}"
            if step.on_failure is StepFailure.WARN:
                reason = f"{reason} (warning: the job goes on)"
            report(EventKind.INIT_STEP_FAILED, step.id, reason)
            if step.on_failure is StepFailure.FAIL:
                return reason
            continue
        tries = "" if attempts == 1 else f" after {attempts} attempts"
        report(EventKind.INIT_STEP_SUCCEEDED, step.id, f"{step.action.value} succeeded{tries}")
    return None


async def _run_with_retries(step: InitStep, run: RunInContainer) -> int:
    """Runs the step up to 1 + retry times, each within its timeout; returns the attempts."""
    for attempt in range(1, step.retry + 2):
        try:
            async with asyncio.timeout(step.timeout_seconds):
                await _run_once(step, run)
            return attempt
        except TimeoutError:
            failure = StepFailed(f"timed out after {step.timeout_seconds:g}s")
        except StepFailed as error:
            failure = error
        if attempt <= step.retry:
            await asyncio.sleep(RETRY_DELAY_SECONDS)
    raise failure


async def _run_once(step: InitStep, run: RunInContainer) -> None:
    params = step.params
    if step.action is InitAction.WAIT_TCP:
        await wait_tcp(params["host"], params["port"], params["timeout"])
    elif step.action is InitAction.WAIT_HTTP:
        await wait_http(params["url"], params["expect_status"], params["timeout"])
    elif step.action is InitAction.SLEEP:
        await asyncio.sleep(params["seconds"])
    else:
        code = await run(step, params["command"], params["timeout"])
        if code != 0:
            raise StepFailed(f"the command exited with code {code}")


async def wait_tcp(host: str, port: int, timeout: float) -> None:
    """Waits until host:port accepts a TCP connection."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error = "no attempt"
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), POLL_SECONDS * 5
            )
        except (OSError, TimeoutError) as error:
            last_error = str(error) or type(error).__name__
            await asyncio.sleep(POLL_SECONDS)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise StepFailed(f"{host}:{port} accepted no connection within {timeout:g}s ({last_error})")


async def wait_http(url: str, expect_status: int, timeout: float) -> None:
    """Waits until a GET of `url` answers `expect_status`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "no answer"
    while loop.time() < deadline:
        status = await asyncio.to_thread(_http_status, url)
        if status == expect_status:
            return
        last = f"status {status}" if status else "no answer"
        await asyncio.sleep(POLL_SECONDS)
    raise StepFailed(f"{url} did not answer {expect_status} within {timeout:g}s (last: {last})")


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError):
        return 0
