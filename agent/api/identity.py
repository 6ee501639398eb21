"""Who is calling, as far as the agent can tell, for what is scoped to a caller (a
TriggerJob request_id)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

# The name of the token the current call presented (set by agent.api.auth for the call).
TOKEN_NAME: ContextVar[str] = ContextVar("token_name", default="")


def caller_identity(context: Any) -> str:
    """The token's name; else the client certificate's subject; else "" (the unix socket
    or a listener without credentials: all such callers are one identity)."""
    name = TOKEN_NAME.get()
    if name:
        return f"token:{name}"
    try:
        properties = context.auth_context() or {}
    except (AttributeError, NotImplementedError):
        properties = {}
    for key in ("x509_subject_name", "x509_common_name"):
        values = properties.get(key)
        if values:
            return f"cert:{values[0].decode(errors='replace')}"
    return ""
