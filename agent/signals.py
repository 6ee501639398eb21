"""Signals by name or number, as a spec's stop_signal and an image's StopSignal name them."""

from __future__ import annotations

import signal
from typing import Any


def signal_name(value: Any) -> str | None:
    """A signal by name or number ("TERM", "SIGTERM", 15) -> "SIGTERM"; None for anything
    that names no signal."""
    text = str(value).strip().upper()
    try:
        found = (
            signal.Signals(int(text))
            if text.isdigit()
            else signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
        )
    except (KeyError, ValueError):
        return None
    return found.name
