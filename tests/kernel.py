"""What the tests ask of the running kernel."""

from __future__ import annotations

import os
import re


def kernel_release() -> tuple[int, int]:
    """The running kernel's major and minor version."""
    major, minor = re.findall(r"\d+", os.uname().release)[:2]
    return int(major), int(minor)
