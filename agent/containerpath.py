"""Paths inside a container (working directory, mount targets, the payload file)."""

from __future__ import annotations

import posixpath
from typing import TypeGuard


def is_absolute_normalized(path: object) -> TypeGuard[str]:
    """True for an absolute path written the one way: no `..`, `.`, `//` or trailing `/`."""
    return (
        isinstance(path, str)
        and path.startswith("/")
        and "\0" not in path
        and posixpath.normpath(path) == path
        and not path.startswith("//")
    )
