"""Running helper commands without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from agent.hostfs import CHILD_UMASK
from agent.runtime.errors import CommandError

P = ParamSpec("P")
T = TypeVar("T")
# kill_tree: how long the processes under the root may take to die and be reaped, and the
# pause between two passes over them.
KILL_TREE_SECONDS = 2.0
KILL_PASS_PAUSE = 0.01


async def off_loop(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Runs blocking work (mounts, tree removals, forks) in a worker thread, so that the
    event loop serves other executions meanwhile. A cancelled caller still waits for the
    work to end, so that its cleanup never races a half-done mount or spawn."""
    return await off_loop_cancelling(functools.partial(function, *args, **kwargs), None)


async def off_loop_cancelling(work: Callable[[], T], on_cancel: Callable[[], None] | None) -> T:
    """off_loop, calling `on_cancel` (on the loop) when the caller is cancelled, before
    waiting for the work to end: it tells the work to cut itself short."""
    # As asyncio.to_thread, without a task around the executor's future.
    call = functools.partial(contextvars.copy_context().run, work)
    done = asyncio.get_running_loop().run_in_executor(None, call)
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        await asyncio.wait([done])
        done.exception()  # seen: the caller's cancellation is what it gets
        raise


async def run(argv: list[str], timeout: float | None = None, executable: str | None = None) -> str:
    """Runs a command and returns its stdout; raises CommandError when it fails or times out.

    The command is started and waited for in one worker thread, blocked on its pipes and
    its exit: a hand-off to a thread and back costs the loop about as much CPU as a spawn,
    so a call makes one (and the fork stays off the loop: on a busy machine the parent
    waits for the child to be scheduled and exec, which on the event loop stalled every
    other execution). A cancelled caller kills the command and waits for its end.
    `executable` is the file to execute when it is not argv[0].
    """
    command = _Command(argv, timeout, executable)
    return await off_loop_cancelling(command.output, command.cancel)


def run_here(argv: list[str], timeout: float | None = None, executable: str | None = None) -> str:
    """run, blocking the calling thread: for work already in a worker thread."""
    return _Command(argv, timeout, executable).output()


class _Command:
    """One command run to its end in the calling thread; `cancel`, from another thread,
    kills it or keeps it from starting, without waiting for a spawn under way: the loop
    calls it."""

    def __init__(
        self, argv: list[str], timeout: float | None = None, executable: str | None = None
    ) -> None:
        self._argv = argv
        self._executable = executable
        self._timeout = timeout
        self._cancelled = False
        self._process: subprocess.Popen[bytes] | None = None

    def cancel(self) -> None:
        """Kills the command (its thread still waits for it), or keeps it from starting."""
        # The flag is set before the process is looked at, and `output` sets the process
        # before it looks at the flag: one of the two sees the other's write and kills it.
        self._cancelled = True
        self._kill()

    def _kill(self) -> None:
        process = self._process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    def output(self) -> str:
        """Starts the command and waits for it; its stdout. Raises CommandError when it
        cannot start, fails or times out (or was cancelled before it started)."""
        argv = self._argv
        if self._cancelled:
            raise CommandError(argv, -1, "cancelled")
        try:
            process = self._process = _spawn(argv, self._executable)
        except OSError as error:
            raise CommandError(argv, -1, f"cannot run {argv[0]}: {error.strerror}") from None
        if self._cancelled:
            self._kill()
        with process:
            try:
                stdout, stderr = process.communicate(timeout=self._timeout)
            except subprocess.TimeoutExpired:
                # Waited for, not read to EOF: a child it left may hold its pipes open.
                process.kill()
                process.wait()
                raise CommandError(argv, -1, f"timed out after {self._timeout:g}s") from None
        if process.returncode != 0:
            raise CommandError(argv, process.returncode, stderr.decode(errors="replace"))
        return stdout.decode(errors="replace")


def _spawn(argv: list[str], executable: str | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        executable=executable,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        umask=CHILD_UMASK,
    )


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


def exited_here(process: subprocess.Popen[bytes], timeout: float | None) -> bool:
    """exited, blocking the calling thread (a worker thread) up to `timeout`: True once the
    child has ended."""
    if process.poll() is not None:
        return True
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        # Another waiter reaped it between the poll and here.
        return True
    try:
        if process.poll() is None:
            pidfd_exited_here(pidfd, timeout)
    finally:
        os.close(pidfd)
    return process.poll() is not None


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


def pidfd_exited_here(pidfd: int, timeout: float | None = None) -> bool:
    """pidfd_exited, blocking the calling thread (a worker thread)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else timeout * 1000))


def kill_tree(root: int, timeout: float = KILL_TREE_SECONDS) -> None:
    """SIGKILLs every process under `root` (its children, theirs, ...), then `root`. The
    root goes last, so that what a killed process leaves to it (a subreaper such as
    conmon) is still found under it by the next pass. Passes go on until nothing is left
    under the root, or for `timeout` at most: a process may outlive its SIGKILL for a
    while (one in a frozen cgroup, one in an uninterruptible wait). Blocking: call it
    from a worker thread."""
    deadline = time.monotonic() + timeout
    while found := _descendants(root):
        # Children before their parents: a parent killed first would leave its children
        # to another, and they would no longer be the children found.
        for pid, parent, zombie in reversed(found):
            if not zombie:
                _kill_child(pid, parent)
        if time.monotonic() >= deadline:
            break
        time.sleep(KILL_PASS_PAUSE)
    with contextlib.suppress(ProcessLookupError):
        os.kill(root, signal.SIGKILL)


def _descendants(root: int) -> list[tuple[int, int, bool]]:
    """The processes under `root`, parents first: each with its parent, and whether it is
    a zombie (dead, not yet reaped)."""
    children: dict[int, list[tuple[int, bool]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        found = _parent_and_state(int(entry))
        if found is not None:
            parent, state = found
            children.setdefault(parent, []).append((int(entry), state == "Z"))
    result: list[tuple[int, int, bool]] = []
    pending = [root]
    while pending:
        parent = pending.pop(0)
        for child, zombie in children.get(parent, []):
            pending.append(child)
            result.append((child, parent, zombie))
    return result


def _parent_and_state(pid: int) -> tuple[int, str] | None:
    """A process's parent pid and state letter, from /proc (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode(errors="replace")
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces and parentheses itself.
    fields = text.rpartition(")")[2].split()
    if len(fields) < 2 or not fields[1].isdigit():
        return None
    return int(fields[1]), fields[0]


def _kill_child(pid: int, parent: int) -> None:
    """SIGKILLs `pid` if it is still the child of `parent` found in /proc (through a pidfd
    opened first: a pid given out again since is not killed)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        found = _parent_and_state(pid)
        if found is not None and found[0] == parent:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)
