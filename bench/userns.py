"""P3U: start latency of a job in its own user namespace against the same job in the
host's, from the same prepared image (P3's measure: trigger to terminal).

A job in a user namespace gets an idmapped view of the image's rootfs as its overlay's
lower layer and a bundle the range's root can reach; the image is shared and unpacked
once either way. The user namespace that idmapped mounts take their mapping from is made
once per range, in the warm-up runs. Runs alternate, so both sides meet the same phases
of the host.

    python -m bench.userns [--runtime youki] [--runs 30]
"""

from __future__ import annotations

import argparse
import statistics

from bench.common import Bench, agent_run_ms, report, scratch_agent

WARM_UP = 3


def register(bench: Bench, name: str, user_namespace: str) -> None:
    """A job running /bin/true from the example image, in the given user namespace."""
    bench.client.register(
        f"version: v1\ndeployment: bench\nservices:\n  {name}:\n    rtype: job\n"
        "    image: {name: 'busybox:latest', pull_policy: never}\n"
        f"    user_namespace: {user_namespace}\n"
        "    command: {entrypoint: [/bin/true]}\n",
        replace=True,
    )


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with scratch_agent(args.runtime, "--allow-host-userns") as bench:
        register(bench, "own", "private")
        register(bench, "host", "host")
        own_ms: list[float] = []
        host_ms: list[float] = []
        for index in range(args.runs + WARM_UP):
            pair = (agent_run_ms(bench.client, "own"), agent_run_ms(bench.client, "host"))
            if index >= WARM_UP:
                own_ms.append(pair[0])
                host_ms.append(pair[1])
    report(
        "P3U",
        f"P3U trigger-to-terminal in a user namespace against the host's, {args.runtime}, "
        f"n={args.runs}",
        statistics.median(own_ms),
        statistics.median(host_ms),
        "ms",
        args.runs,
        "the same job in the host's user namespace",
        own_ms,
        host_ms,
        runtime=args.runtime,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
