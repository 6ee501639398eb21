"""CPU priority: the agent's own threads run ahead of the processes it starts.

On a busy node the event loop competes for CPU with the containers, conmon and the runtime
calls. Every moment it waits for a CPU delays every RPC and every watch stream behind it:
with many WatchEvents streams open, one event's fan-out is long, and each
preemption in the middle lands on all the streams not yet served (bench P7). So the thread
that runs the loop takes a lower nice value than the agent was started with, and so do the
threads it makes afterwards (gRPC's I/O threads), while the worker threads, which spawn
conmon, the runtime, skopeo and umoci, go back to the starting value, and with them all
those processes and the containers.

Linux keeps a nice value per thread, and a new thread or process takes its creator's.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

HIGHEST = -20


def current_nice() -> int:
    """The calling thread's nice value."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def raise_thread_priority(boost: int) -> int:
    """Lowers the calling thread's nice value by `boost` (to -20 at most) and returns the
    value it had: the one to give back to threads that start processes. Without the
    privilege to raise priority (CAP_SYS_NICE) the thread keeps its value and a warning
    says so."""
    base = current_nice()
    wanted = max(HIGHEST, base - boost)
    if wanted != base:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, wanted)
        except PermissionError:
            log.warning(
                "the agent's threads keep nice %d: raising priority needs CAP_SYS_NICE", base
            )
            return base
        log.info("the agent's threads run at nice %d; what it starts at nice %d", wanted, base)
    return base


def restore_thread_priority(base: int) -> None:
    """Gives the calling thread the nice value `base` back (lowering priority is always
    allowed): for worker threads, whose children must not inherit the agent's priority."""
    if current_nice() != base:
        os.setpriority(os.PRIO_PROCESS, 0, base)
