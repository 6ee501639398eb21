"""Running helper commands without blocking the event loop."""

from __future__ import annotations

import asyncio

from agent.runtime.errors import CommandError


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
