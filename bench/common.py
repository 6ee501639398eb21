"""What every benchmark shares: a scratch agent with the example image, the raw runtime's
bundle of the same rootfs, and the report (both figures, their ratio, one JSON line)."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jobagent_client import JobAgentClient

from agent.domain import CommandSpec
from agent.runtime.bundle import build_config, resolve_process
from agent.runtime.images import ImageConfig
from tests.e2e.harness import AgentProcess, build_example_image, missing_requirements


@dataclass
class Bench:
    """A running scratch agent and the paths around it."""

    root: Path
    agent: AgentProcess
    client: JobAgentClient
    layout: Path

    def register(self, name: str, image: str = "busybox:latest") -> None:
        """Registers a job `name` that runs /bin/true from `image` (already in the store)."""
        self.client.register(
            f"version: v1\ndeployment: bench\nservices:\n  {name}:\n    rtype: job\n"
            f"    image: {{name: '{image}', pull_policy: never}}\n"
            "    command: {entrypoint: [/bin/true]}\n",
            replace=True,
        )

    def rootfs(self) -> Path:
        """The unpacked rootfs of the example image in the agent's store."""
        (rootfs,) = (self.agent.data_dir / "images" / "rootfs").glob("sha256-*/rootfs")
        return rootfs

    def raw_bundle(self, rootfs: Path, name: str = "raw") -> Path:
        """A bundle over `rootfs`, configured as the agent configures its containers; each
        name has its own bundle and cgroup, so that bundles can run side by side."""
        bundle = self.root / "bundles" / name
        bundle.mkdir(parents=True, exist_ok=True)
        process = resolve_process(ImageConfig(), CommandSpec(entrypoint=("/bin/true",)), {}, rootfs)
        config = build_config(process, rootfs, name, f"/jobagent-bench/{name}")
        config["root"]["readonly"] = True
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle


@contextmanager
def scratch_agent(runtime: str, *agent_args: str) -> Iterator[Bench]:
    """An agent on a scratch data directory whose store holds busybox:latest."""
    if reason := missing_requirements():
        raise SystemExit(f"bench: cannot run: {reason}")
    with tempfile.TemporaryDirectory(prefix="jobagent-bench-") as scratch:
        root = Path(scratch)
        layout = build_example_image(root / "image")
        agent = AgentProcess(root / "agent", runtime, extra_args=agent_args)
        agent.data_dir.mkdir()
        agent.import_image(f"oci:{layout}:latest", "busybox:latest")
        agent.start()
        try:
            with agent.client() as client:
                yield Bench(root, agent, client, layout)
        finally:
            agent.stop()


def agent_run_ms(client: JobAgentClient, job: str) -> float:
    """Milliseconds from TriggerJob to the terminal event on WatchExecution."""
    started = time.perf_counter()
    final = client.wait(client.trigger(job).id)
    elapsed = (time.perf_counter() - started) * 1000
    assert final.status == "completed", final
    return elapsed


class RawRunHung(Exception):
    """`<runtime> run` did not return: youki 0.7's run can miss its child's exit when
    several run at once (the process waits in sigtimedwait with the child gone)."""


def raw_run_ms(
    runtime: str, state_root: Path, bundle: Path, container_id: str, timeout: float = 10.0
) -> float:
    """Milliseconds of `<runtime> run` (create, start, wait, delete) of a bundle."""
    argv = [runtime, "--root", str(state_root)]
    started = time.perf_counter()
    try:
        subprocess.run([*argv, "run", "--bundle", str(bundle), container_id], check=True,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        subprocess.run([*argv, "delete", "--force", container_id], capture_output=True)
        raise RawRunHung(container_id) from None
    return (time.perf_counter() - started) * 1000


def report(bench: str, title: str, agent: float, baseline: float, unit: str, n: int,
           baseline_name: str, **extra: object) -> None:  # fmt: skip
    """Prints both figures, their ratio, and one JSON line a machine can read."""
    ratio = agent / baseline
    print(title)
    print(f"  agent    {agent:10.2f} {unit}")
    print(f"  baseline {baseline:10.2f} {unit}  ({baseline_name})")
    print(f"  ratio    {ratio:10.2f}")
    record = {"bench": bench, **extra, "agent": round(agent, 2), "baseline": round(baseline, 2),
              "ratio": round(ratio, 2), "unit": unit, "n": n}  # fmt: skip
    print(json.dumps(record))
