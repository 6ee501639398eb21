"""Running helper commands without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import subprocess
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from agent.hostfs import CHILD_UMASK
from agent.runtime.errors import CommandError

P = ParamSpec("P")
T = TypeVar("T")


async def off_loop(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Runs blocking work (mounts, tree removals, forks) in a worker thread, so that the
    event loop serves other executions meanwhile. A cancelled caller still waits for the
    work to end, so that its cleanup never races a half-done mount or spawn."""
    # As asyncio.to_thread, without a task around the executor's future.
    call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
    work = asyncio.get_running_loop().run_in_executor(None, call)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        work.exception()  # seen: the caller's cancellation is what it gets
        raise


async def run(argv: list[str], timeout: float | None = None, executable: str | None = None) -> str:
    """Runs a command and returns its stdout; raises CommandError when it fails or times out.

    The fork happens in a worker thread (on a busy machine the parent waits for the child
    to be scheduled and exec, which on the event loop stalled every other execution); the
    output and the exit are awaited on the loop. A cancelled caller kills the command.
    `executable` is the file to execute when it is not argv[0].
    """
    try:
        process = await off_loop(_spawn, argv, executable)
    except OSError as error:
        raise CommandError(argv, -1, f"cannot run {argv[0]}: {error.strerror}") from None
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr, code = await _outputs_and_exit(process)
    except TimeoutError:
        process.kill()
        await exited(process)
        raise CommandError(argv, -1, f"timed out after {timeout:g}s") from None
    except asyncio.CancelledError:
        process.kill()
        await exited(process)
        raise
    finally:
        process.stdout.close()
        process.stderr.close()
    if code != 0:
        raise CommandError(argv, code, stderr.decode(errors="replace"))
    return stdout.decode(errors="replace")


async def _outputs_and_exit(process: subprocess.Popen[bytes]) -> tuple[bytes, bytes, int]:
    """A child's stdout and stderr, each read on the event loop as it arrives until EOF,
    and its exit status once its pidfd turns readable: what gathering read_to_end twice
    and exited gives, with one future for the three instead of a task for each."""
    assert process.stdout is not None and process.stderr is not None
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    chunks: dict[int, list[bytes]] = {process.stdout.fileno(): [], process.stderr.fileno(): []}
    pending = set(chunks)
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        # Reaped already: process.wait() below has its status.
        pidfd = -1

    def finished(fd: int) -> None:
        loop.remove_reader(fd)
        pending.discard(fd)
        if not pending and not done.done():
            done.set_result(None)

    def readable(fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            chunks[fd].append(chunk)
        else:
            finished(fd)

    for fd in chunks:
        os.set_blocking(fd, False)
        loop.add_reader(fd, readable, fd)
    if pidfd >= 0:
        pending.add(pidfd)
        loop.add_reader(pidfd, finished, pidfd)
    try:
        await done
    finally:
        for fd in pending:
            loop.remove_reader(fd)
        if pidfd >= 0:
            os.close(pidfd)
    stdout, stderr = (b"".join(chunks[fd]) for fd in chunks)
    return stdout, stderr, process.wait()


def _spawn(argv: list[str], executable: str | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        executable=executable,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        umask=CHILD_UMASK,
    )


async def read_to_end(fd: int, until: Callable[[bytes], bool] | None = None) -> bytes:
    """What a pipe gives, read on the event loop as it arrives: until EOF, or until a chunk
    for which `until` is true."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    chunks: list[bytes] = []
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        chunks.append(chunk)
        if (not chunk or (until is not None and until(chunk))) and not done.done():
            done.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


async def exited(process: subprocess.Popen[bytes]) -> int:
    """Waits on the event loop for a child to end (its pidfd turns readable); its status.
    Several may wait for the same child."""
    if process.poll() is not None:
        return process.returncode
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        # Another waiter reaped it between the poll and here.
        return process.wait()
    try:
        if process.poll() is None:
            await pidfd_exited(pidfd)
    finally:
        os.close(pidfd)
    return process.wait()


async def pidfd_exited(pidfd: int, timeout: float | None = None) -> bool:
    """True once the process of `pidfd` has exited (the pidfd turns readable) within
    `timeout` (None: however long it takes); False past it. The caller closes the pidfd."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(pidfd, wake)
    try:
        await asyncio.wait_for(ready, timeout)
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(pidfd)
    return True
