"""A program the suite needs and `make test` installs is a failure there, a skip elsewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tools


def collect_e2e(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Collects one end-to-end module with a PATH that lacks youki (in /usr/local/bin)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            "tests/e2e/test_surface.py",
        ],
        cwd=tools.REPO,
        env={**environment, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def quiet_environment() -> dict[str, str]:
    """This process's environment without the variables that make the suite strict."""
    return {k: v for k, v in os.environ.items() if k not in ("CI", "JOBAGENT_STRICT_TESTS")}


@pytest.mark.skipif(os.geteuid() != 0, reason="without root the end-to-end tests skip anyway")
def test_a_missing_program_fails_a_strict_run_naming_its_install_step(
    quiet_environment: dict[str, str],
) -> None:
    if Path("/usr/bin/youki").exists():
        pytest.skip("youki is in /usr/bin here: a PATH without it cannot be made")
    strict = collect_e2e({**quiet_environment, "JOBAGENT_STRICT_TESTS": "1"})
    assert strict.returncode != 0
    assert "youki (`make youki (cargo install youki --locked)`)" in strict.stdout + strict.stderr
    in_ci = collect_e2e({**quiet_environment, "CI": "true"})
    assert in_ci.returncode != 0
    relaxed = collect_e2e(quiet_environment)
    assert relaxed.returncode == 0, relaxed.stdout + relaxed.stderr


def test_require_skips_outside_make_test_and_fails_inside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("JOBAGENT_STRICT_TESTS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-program"):
        tools.require("no-such-program")
    monkeypatch.setenv("JOBAGENT_STRICT_TESTS", "1")
    with pytest.raises(pytest.fail.Exception, match=re.escape("no-such-program (`make deps`)")):
        tools.require("no-such-program")
    tools.require("sh")
