"""The runtime's delete under load: tried again while the container still exists (found by
the soak: youki gave up on a cgroup whose killed processes had not left it yet, and the
container's mounts, cgroups, state and bundle stayed behind), and a state that is not JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.runtime import oci
from agent.runtime.errors import CommandError
from agent.runtime.oci import OciRuntime

# A runtime whose delete fails while the file `fails` holds a count above zero, and whose
# state prints the file `state` (or fails once the container is deleted).
SCRIPT = """#!/bin/sh
here=$(dirname "$0")
case "$3" in
  delete)
    left=$(cat "$here/fails")
    if [ "$left" -gt 0 ]; then
      echo $((left - 1)) > "$here/fails"
      echo "failed to remove cgroup: could not delete" >&2
      exit 1
    fi
    touch "$here/deleted";;
  state)
    [ -e "$here/deleted" ] && exit 1
    cat "$here/state";;
esac
"""


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OciRuntime:
    monkeypatch.setattr(oci, "DELETE_BACKOFF", 0.001)
    script = tmp_path / "runtime"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    (tmp_path / "state").write_text('{"status": "stopped"}')
    return OciRuntime(str(script), tmp_path / "root")


async def test_a_delete_that_fails_while_the_container_exists_is_tried_again(
    runtime: OciRuntime, tmp_path: Path
) -> None:
    (tmp_path / "fails").write_text(str(oci.DELETE_TRIES - 1))
    runtime.delete_here("ja-1")
    assert (tmp_path / "deleted").exists()
    assert await runtime.state("ja-1") is None


async def test_a_delete_that_keeps_failing_is_an_error(runtime: OciRuntime, tmp_path: Path) -> None:
    (tmp_path / "fails").write_text(str(oci.DELETE_TRIES))
    with pytest.raises(CommandError, match="could not delete"):
        runtime.delete_here("ja-1")


async def test_a_state_that_is_not_json_is_unknown_not_an_agent_error(
    runtime: OciRuntime, tmp_path: Path
) -> None:
    (tmp_path / "state").write_text("")
    assert await runtime.state("ja-1") == oci.UNREADABLE_STATE
    (tmp_path / "fails").write_text(str(oci.DELETE_TRIES))
    with pytest.raises(CommandError):
        runtime.delete_here("ja-1")
