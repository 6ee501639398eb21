"""The first admin token: made at the first start when no tokens file is configured, kept
in a file only the agent's user may read, and reused at every later start."""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

from agent.api.auth import Caller, Role, TokenTable
from agent.errors import InvalidSpec

log = logging.getLogger(__name__)

TOKEN_BYTES = 32
CALLER_NAME = "admin-token"
# What TokenTable demands of a token written in a tokens file.
MIN_TOKEN_CHARS = 16


def load_or_create(path: Path) -> str:
    """The token in `path`, made there (mode 0600) when there is none yet."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(TOKEN_BYTES)
    # Written whole under another name, then linked: a reader never sees half a token, and
    # of two agents starting at once the second one reads the first one's.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".admin-token-")
    try:
        with os.fdopen(descriptor, "w") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(token + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
    except FileExistsError:
        return _read(path)
    finally:
        os.unlink(temporary)
    log.info("made an admin token in %s (only its owner may read it)", path)
    return token


def _read(path: Path) -> str:
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:
        # A symbolic link (ELOOP) among them: the token is never read through one.
        raise InvalidSpec("admin_token", f"cannot read {path}: {error.strerror}") from None
    with os.fdopen(descriptor) as file:
        info = os.fstat(descriptor)
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or mode & 0o077:
            raise InvalidSpec(
                "admin_token",
                f"{path} must be a file of the agent's user that no one else may read or "
                f"write (it is uid {info.st_uid}, mode {mode:04o}): remove it, and the agent "
                "makes a new token",
            )
        token = file.read().strip()
    if len(token) < MIN_TOKEN_CHARS:
        raise InvalidSpec("admin_token", f"{path} holds no token: remove it for a new one")
    return token


def table(token: str) -> TokenTable:
    """A token table that knows `token` (by its SHA-256 only) as an admin's."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    return TokenTable({digest: Caller(CALLER_NAME, Role.ADMIN)})
