"""A sealed in-memory copy of the OCI runtime's binary, executed instead of the file on disk.

youki and runc defend their host binary against CVE-2019-5736 (a container overwriting it
through /proc/self/exe) by copying it into a sealed memfd and re-executing the copy, on
every invocation, unless they already run from such a copy. That copy and second exec are
most of a short youki call's cost (the whole binary copied, the dynamic loader run
twice). The agent makes the sealed copy once and executes it for every call, which
keeps the same protection: the binary the containers could reach is immutable.

The copy is taken when the agent starts: a runtime upgraded on disk is used from the next
agent start, as with any binary a long-running process has loaded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from pathlib import Path

from agent.hostfs import make_dir

log = logging.getLogger(__name__)

# Linux 6.3 added MFD_EXEC and F_SEAL_EXEC; the runtimes set both when the kernel has them
# and compare the seals exactly, so the copy carries the same set.
MFD_EXEC = 0x0010
F_SEAL_EXEC = 0x0020
_CONTENT_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


class SealedBinary:
    """An executable, write-sealed memfd copy of a binary, owned by this process."""

    def __init__(self, fd: int, source: str, link: Path) -> None:
        self._fd = fd
        self.source = source
        # What to execute: a link named like the binary (the process's name comes from the
        # path executed) to the copy in this process's fd table, which children (whose
        # close_fds drops the fd) and grandchildren (conmon's runtime) reach while it runs.
        self.path = str(link)
        temporary = link.with_name(f".{link.name}.{os.getpid()}")
        temporary.unlink(missing_ok=True)
        self._target = f"/proc/{os.getpid()}/fd/{fd}"
        temporary.symlink_to(self._target)
        temporary.replace(link)

    @classmethod
    def copy_of(cls, binary: str, link_dir: Path) -> SealedBinary | None:
        """Seals a copy of `binary`, linked as `link_dir`/<its name>; None (and the file
        on disk is used) when the kernel refuses, e.g. vm.memfd_noexec forbids executable
        memfds."""
        try:
            fd = _executable_memfd(os.path.basename(binary))
        except OSError as error:
            log.info("running %s from disk: no executable memfd (%s)", binary, error.strerror)
            return None
        try:
            with open(binary, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                copied = 0
                while copied < size:
                    sent = os.sendfile(fd, source.fileno(), copied, size - copied)
                    if sent == 0:
                        break
                    copied += sent
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, F_SEAL_EXEC)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _CONTENT_SEALS)
            make_dir(link_dir)
            return cls(fd, binary, link_dir / os.path.basename(binary))
        except OSError as error:
            os.close(fd)
            log.info("running %s from disk: cannot seal a copy (%s)", binary, error.strerror)
            return None

    def close(self) -> None:
        """Releases the copy and its link; running children keep theirs."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                if os.readlink(self.path) == self._target:
                    os.unlink(self.path)
            os.close(self._fd)
            self._fd = -1


def _executable_memfd(name: str) -> int:
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        return os.memfd_create(name, flags | MFD_EXEC)
    except OSError as error:
        if error.errno != errno.EINVAL:  # a kernel before 6.3 does not know MFD_EXEC
            raise
        return os.memfd_create(name, flags)
