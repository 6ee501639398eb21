"""P1: TriggerJob to terminal event for a `true` job, against the raw runtime's `run`.

Each round runs the agent path and the raw runtime (`<runtime> run` of a bundle with the
same image rootfs and the same config) back to back, alternating which goes first.
Prints both medians, their ratio, and one JSON line.

    python -m bench.latency [--runtime youki] [--runs 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from jobagent_client import JobAgentClient

from agent.domain import CommandSpec
from agent.runtime.bundle import build_config, resolve_process
from agent.runtime.images import ImageConfig
from tests.e2e.harness import AgentProcess, build_example_image, missing_requirements

JOB = """version: v1
deployment: bench
services:
  bench-true:
    rtype: job
    image: {name: busybox:latest, pull_policy: never}
    command: {entrypoint: [/bin/true]}
"""


def agent_round(client: JobAgentClient) -> float:
    """Milliseconds from TriggerJob to the terminal event on WatchExecution."""
    started = time.perf_counter()
    execution = client.trigger("bench-true")
    final = client.wait(execution.id)
    elapsed = (time.perf_counter() - started) * 1000
    assert final.status == "completed", final
    return elapsed


def raw_round(runtime: str, state_root: Path, bundle: Path, index: int) -> float:
    """Milliseconds of `<runtime> run` (create, start, wait, delete) of the same bundle."""
    started = time.perf_counter()
    subprocess.run(
        [runtime, "--root", str(state_root), "run", "--bundle", str(bundle), f"raw-{index}"],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return (time.perf_counter() - started) * 1000


def write_raw_bundle(bundle: Path, rootfs: Path) -> None:
    """A bundle over the agent's unpacked image rootfs, configured as the agent does."""
    bundle.mkdir(parents=True)
    process = resolve_process(ImageConfig(), CommandSpec(entrypoint=("/bin/true",)), {}, rootfs)
    config = build_config(process, rootfs, "raw", "/jobagent-bench/raw")
    config["root"]["readonly"] = True
    (bundle / "config.json").write_text(json.dumps(config))


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if reason := missing_requirements():
        print(f"bench: cannot run: {reason}")
        return 1
    with tempfile.TemporaryDirectory(prefix="jobagent-bench-") as scratch:
        root = Path(scratch)
        layout = build_example_image(root / "image")
        agent = AgentProcess(root / "agent", args.runtime)
        agent.data_dir.mkdir()
        agent.import_image(f"oci:{layout}:latest", "busybox:latest")
        agent.start()
        try:
            (rootfs,) = (agent.data_dir / "images" / "rootfs").glob("sha256-*/rootfs")
            write_raw_bundle(root / "bundle", rootfs)
            with agent.client() as client:
                client.register(JOB, replace=True)
                agent_ms: list[float] = []
                raw_ms: list[float] = []
                for index in range(args.warmup + args.runs):
                    raw = (args.runtime, root / "state", root / "bundle", index)
                    if index % 2 == 0:
                        agent_time = agent_round(client)
                        raw_time = raw_round(*raw)
                    else:
                        raw_time = raw_round(*raw)
                        agent_time = agent_round(client)
                    if index >= args.warmup:
                        agent_ms.append(agent_time)
                        raw_ms.append(raw_time)
        finally:
            agent.stop()
    agent_median = statistics.median(agent_ms)
    raw_median = statistics.median(raw_ms)
    ratio = agent_median / raw_median
    print(f"P1 trigger-to-terminal of a `true` job, {args.runtime}, n={args.runs}")
    print(f"  agent median {agent_median:8.1f} ms")
    print(f"  raw   median {raw_median:8.1f} ms  ({args.runtime} run of the same bundle)")
    print(f"  ratio        {ratio:8.2f}")
    print(json.dumps({"bench": "P1", "runtime": args.runtime, "agent": round(agent_median, 1),
                      "baseline": round(raw_median, 1), "ratio": round(ratio, 2),
                      "unit": "ms", "n": args.runs}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
