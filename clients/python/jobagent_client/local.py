"""Where the local agent listens, and the token to call it with, found as the docker CLI
finds its socket: flags first, then the environment, then the agent's default paths."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

DEFAULT_ADDRESS = "unix:/run/jobagent/jobagent.sock"
# The admin token an agent with the default data directory makes at its first start.
DEFAULT_TOKEN_FILE = Path("/var/lib/jobagent/admin.token")
ADDRESS_ENV = "JOBAGENT_ADDRESS"
TOKEN_ENV = "JOBAGENT_TOKEN"
TOKEN_FILE_ENV = "JOBAGENT_TOKEN_FILE"


def find_address(env: Mapping[str, str] = os.environ) -> str:
    """$JOBAGENT_ADDRESS, else the agent's default socket."""
    return env.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def find_token(
    token_file: Path | None = None,
    env: Mapping[str, str] = os.environ,
    default_file: Path = DEFAULT_TOKEN_FILE,
) -> str | None:
    """The token in `token_file`, else $JOBAGENT_TOKEN, else the token in
    $JOBAGENT_TOKEN_FILE, else the one in `default_file` when this user may read it.
    Raises OSError when a file named by the caller or the environment cannot be read."""
    if token_file is not None:
        return read_token(token_file)
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV]
    if env.get(TOKEN_FILE_ENV):
        return read_token(Path(env[TOKEN_FILE_ENV]))
    try:
        return read_token(default_file)
    except OSError:
        return None


def read_token(path: Path) -> str:
    """The token a file holds (surrounding whitespace dropped)."""
    return path.read_text().strip()
