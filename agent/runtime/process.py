"""Running helper commands without blocking the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from agent.runtime.errors import CommandError

P = ParamSpec("P")
T = TypeVar("T")


async def off_loop(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Runs blocking work (mounts, tree removals, forks) in a worker thread, so that the
    event loop serves other executions meanwhile. A cancelled caller still waits for the
    work to end, so that its cleanup never races a half-done mount or spawn."""
    work = asyncio.ensure_future(asyncio.to_thread(function, *args, **kwargs))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        work.exception()  # seen: the caller's cancellation is what it gets
        raise


async def run(argv: list[str], timeout: float | None = None, executable: str | None = None) -> str:
    """Runs a command and returns its stdout; raises CommandError when it fails or times out.

    `executable` is the file to execute when it is not argv[0].
    """
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            executable=executable,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as error:
        raise CommandError(argv, -1, f"cannot run {argv[0]}: {error.strerror}") from None
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise CommandError(argv, -1, f"timed out after {timeout:g}s") from None
    except asyncio.CancelledError:
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    if process.returncode != 0:
        raise CommandError(argv, process.returncode or 0, stderr.decode(errors="replace"))
    return stdout.decode(errors="replace")
