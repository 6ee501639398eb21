"""P3: start latency of a job from a 200 MB image against the same job from a 1 MB image.

Each image is unpacked once per digest, so after a first run the size should not matter:
containers get a copy-on-write view of the unpacked rootfs. The bench builds both images.

    python -m bench.image_size [--runtime youki] [--runs 30] [--size-mb 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess

from bench.common import agent_run_ms, report, scratch_agent


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--size-mb", type=int, default=200)
    args = parser.parse_args()
    with scratch_agent(args.runtime) as bench:
        big = bench.root / "big"
        shutil.copytree(bench.layout, big)
        unpacked = bench.root / "big-bundle"
        subprocess.run(
            ["umoci", "unpack", "--image", f"{big}:latest", str(unpacked)],
            check=True,
            capture_output=True,
        )
        with (unpacked / "rootfs" / "payload").open("wb") as payload:
            for _ in range(args.size_mb):
                # Random bytes, so that the layer is as large compressed as unpacked.
                payload.write(os.urandom(1 << 20))
        subprocess.run(
            ["umoci", "repack", "--image", f"{big}:latest", str(unpacked)],
            check=True,
            capture_output=True,
        )
        bench.agent.import_image(f"oci:{big}:latest", "bench/big:latest")
        bench.register("small")
        bench.register("big", "bench/big:latest")
        small_ms: list[float] = []
        big_ms: list[float] = []
        for index in range(args.runs + 2):
            pair = (agent_run_ms(bench.client, "small"), agent_run_ms(bench.client, "big"))
            if index >= 2:
                small_ms.append(pair[0])
                big_ms.append(pair[1])
    report(
        "P3",
        f"P3 trigger-to-terminal, {args.size_mb} MB image against a 1 MB image, "
        f"{args.runtime}, n={args.runs}",
        statistics.median(big_ms),
        statistics.median(small_ms),
        "ms",
        args.runs,
        "the same job from the 1 MB image",
        big_ms,
        small_ms,
        runtime=args.runtime,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
