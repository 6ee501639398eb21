"""The programs the suite runs, how `make test` installs each, and what a missing one means.

Outside `make test` (a developer's `pytest tests/unit`, say) a test that needs a missing
program is skipped with its reason. Under `make test` or in CI (CI=true) every program that
`make test` installs must be there: a missing one fails the run, naming the program and the
step that installs it, so that a broken install step can never pass as a run of skips.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Each program the tests run, and the `make` step that installs it.
INSTALL_STEPS = {
    "conmon": "make apt",
    "skopeo": "make apt",
    "umoci": "make apt",
    "docker-registry": "make apt",
    "runc": "make apt",
    "strace": "make apt",
    "busybox": "make apt (busybox-static)",
    "youki": "make youki (cargo install youki --locked)",
    "grpcurl": "make grpcurl",
}
LOCAL_BIN = REPO / ".tools" / "bin"


def strict() -> bool:
    """True under `make test` (JOBAGENT_STRICT_TESTS=1) and in CI (CI=true)."""
    return os.environ.get("JOBAGENT_STRICT_TESTS") == "1" or os.environ.get("CI") == "true"


def find(program: str) -> str | None:
    """The program's path, on PATH or among the tools `make` builds into .tools/bin."""
    return shutil.which(program) or shutil.which(program, path=str(LOCAL_BIN))


def missing(*programs: str) -> str:
    """The missing ones among `programs`, each with its install step ("" when none is)."""
    absent = [name for name in programs if find(name) is None]
    return ", ".join(f"{name} (`{INSTALL_STEPS.get(name, 'make deps')}`)" for name in absent)


def require(*programs: str) -> None:
    """Fails the calling test under `make test` or CI, else skips it, when a program is
    missing."""
    absent = missing(*programs)
    if not absent:
        return
    if strict():
        pytest.fail(f"missing: {absent}", pytrace=False)
    pytest.skip(f"missing: {absent}")
