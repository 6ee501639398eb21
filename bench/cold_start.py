"""P3c: a cold start. A `true` job from an image the node has never seen: a multi-layer
image of about 10,000 files (busybox and `--layers` layers of `--files` small files) on a
loopback registry, pulled and unpacked by the agent, against the same steps by hand in the
same run: `skopeo copy` of the image into an OCI layout, `umoci raw unpack` of it (what the
agent runs), a bundle's config and `<runtime> run` of it.

The agent's figure is from TriggerJob to the container's removal (the raw `run` includes
its `delete`); to the terminal event is printed beside it. Each pair of runs (the agent's,
the one by hand, alternating which goes first) has an image of its own, no layer of which
any other image has: the agent's store holds none of it, and the hand side starts from an
empty directory. Nothing is removed until the end: on an ext4 without a journal, each new
inode is searched for past those deleted in the last minutes, and a removal of thousands
of files slowed the next unpacks (either side's) several times over.

    python -m bench.cold_start [--runtime youki] [--runs 5] [--layers 4] [--files 2500]
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from bench.common import (
    AgentRun,
    Bench,
    RemovalWatch,
    agent_run,
    raw_run_ms,
    removal_watch,
    report,
    scratch_agent,
    scratch_parent,
)
from tests.e2e.harness import Registry

JOB = "cold"
# Each file's size is drawn between these (bytes), its content random: a layer compresses
# no better than real files of code and data would.
FILE_BYTES = (256, 4096)
BUSYBOX = Path("/bin/busybox")
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def base_tar(path: Path, image: int) -> None:
    """An uncompressed base layer: busybox, its applets' links, the mount points, and a
    file naming the image (so that no two images share this layer)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755)):
            tar.addfile(_entry(directory, tarfile.DIRTYPE, mode))
        for directory, mode in (("proc", 0o555), ("sys", 0o555), ("tmp", 0o1777)):
            tar.addfile(_entry(directory, tarfile.DIRTYPE, mode))
        _add_file(tar, "bin/busybox", BUSYBOX.read_bytes(), 0o755)
        _add_file(tar, "etc/bench-image", f"cold start image {image}\n".encode(), 0o644)
        applets = subprocess.run(
            [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox":
                link = _entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
                link.linkname = "busybox"
                tar.addfile(link)


def layer_tar(path: Path, seed: int, layer: int, files: int) -> None:
    """An uncompressed layer of `files` files of random bytes under /bench/layer<N>/, a
    hundred to a directory; the same arguments make the same bytes (and digest)."""
    rng = random.Random(seed)
    top = f"bench/layer{layer}"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("bench", top):
            tar.addfile(_entry(directory, tarfile.DIRTYPE, 0o755))
        for index in range(files):
            if index % 100 == 0:
                tar.addfile(_entry(f"{top}/d{index // 100:03d}", tarfile.DIRTYPE, 0o755))
            data = rng.randbytes(rng.randint(*FILE_BYTES))
            _add_file(tar, f"{top}/d{index // 100:03d}/f{index:05d}", data, 0o644)


def _entry(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    entry = tarfile.TarInfo(name)
    entry.type, entry.mode, entry.mtime = kind, mode, 1_700_000_000
    return entry


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    entry = _entry(name, tarfile.REGTYPE, mode)
    entry.size = len(data)
    tar.addfile(entry, io.BytesIO(data))


def umoci(*args: str) -> None:
    """Runs umoci with `args`."""
    subprocess.run(["umoci", *args], check=True, capture_output=True)


def build_cold_image(target: Path, image: int, layers: int, files: int) -> int:
    """An OCI layout at `target` whose `latest` is image number `image`: the base layer,
    then `layers` layers of `files` files each, every layer its own (no blob in common
    with another image); returns the number of files and links in its layers."""
    umoci("init", "--layout", str(target))
    umoci("new", "--image", f"{target}:latest")
    tar = target.parent / f"{target.name}.tar"
    base_tar(tar, image)
    with tarfile.open(tar) as opened:
        count = len(opened.getmembers())
    umoci("raw", "add-layer", "--image", f"{target}:latest", str(tar))
    for layer in range(layers):
        layer_tar(tar, image * 1000 + layer, layer, files)
        umoci("raw", "add-layer", "--image", f"{target}:latest", str(tar))
        count += files
    tar.unlink()
    umoci(
        "config",
        "--image",
        f"{target}:latest",
        "--tag",
        "latest",
        "--config.cmd",
        "/bin/sh",
        "--config.env",
        PATH,
    )
    umoci("gc", "--layout", str(target))
    return count


def agent_cold_run(bench: Bench, reference: str, removals: RemovalWatch) -> AgentRun:
    """Runs the job from `reference`, an image the agent has never pulled."""
    bench.register(JOB, reference, pull="always")
    return agent_run(bench.client, JOB, removals)


def by_hand_ms(bench: Bench, runtime: str, reference: str, index: int) -> float:
    """Milliseconds of `skopeo copy` + `umoci raw unpack` + config + `<runtime> run`, from
    an empty directory (left in place: a removal of its thousands of files would slow the
    next runs' unpacks on either side, on an ext4 without a journal)."""
    work = bench.root / f"hand-{index}"
    layout, rootfs = work / "layout", work / "rootfs"
    work.mkdir()
    started = time.perf_counter()
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            f"docker://{reference}",
            f"oci:{layout}:latest",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:latest", str(rootfs)],
        check=True,
        capture_output=True,
    )
    bundle = bench.raw_bundle(rootfs, f"hand-{index}")
    raw_run_ms(runtime, bench.raw_state, bundle, f"hand-{index}")
    return (time.perf_counter() - started) * 1000


def main() -> int:
    """Runs the benchmark; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runtime", default="youki")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--files", type=int, default=2500)
    args = parser.parse_args()
    # The images and the registry, in a scratch directory beside the agents' ones.
    with tempfile.TemporaryDirectory(prefix="cold-", dir=scratch_parent()) as directory:
        scratch = Path(directory)
        registry = Registry(scratch / "registry")
        registry.root.mkdir()
        registry.start()
        try:
            built = time.perf_counter()
            references: list[str] = []
            for image in range(args.runs):
                layout = scratch / f"image-{image}"
                entries = build_cold_image(layout, image, args.layers, args.files)
                references.append(registry.push(layout, f"bench/cold:run{image}"))
                shutil.rmtree(layout)
            print(
                f"built and pushed {args.runs} images of {entries} files and links each "
                f"(busybox and {args.layers} layers of {args.files} files, no layer in "
                f"common) in {time.perf_counter() - built:.1f} s",
                flush=True,
            )
            agent_runs, hand_ms = measure(args.runtime, registry.host, references)
        finally:
            registry.stop()
    removed_ms = [run.removed_ms for run in agent_runs]
    terminal_ms = [run.terminal_ms for run in agent_runs]
    report(
        "P3c",
        f"P3c cold start: pull, unpack and run from an image of {entries} files in "
        f"{args.layers + 1} layers on a loopback registry, {args.runtime}, n={args.runs}",
        statistics.median(removed_ms),
        statistics.median(hand_ms),
        "ms",
        args.runs,
        f"skopeo copy + umoci raw unpack + {args.runtime} run",
        removed_ms,
        hand_ms,
        beside={"agent_to_terminal": ("to the terminal event", statistics.median(terminal_ms))},
        runtime=args.runtime,
        files=entries,
        layers=args.layers + 1,
    )
    return 0


def measure(
    runtime: str, registry: str, references: list[str]
) -> tuple[list[AgentRun], list[float]]:
    """The agent's runs and the hand runs, one pair per image, alternating which goes
    first."""
    agent_runs: list[AgentRun] = []
    hand_ms: list[float] = []
    with (
        scratch_agent(runtime, "--insecure-registry", registry) as bench,
        removal_watch(bench) as removals,
    ):
        for index, reference in enumerate(references):
            if index % 2 == 0:
                agent_runs.append(agent_cold_run(bench, reference, removals))
                hand_ms.append(by_hand_ms(bench, runtime, reference, index))
            else:
                hand_ms.append(by_hand_ms(bench, runtime, reference, index))
                agent_runs.append(agent_cold_run(bench, reference, removals))
            print(
                f"  image {index}: agent {agent_runs[-1].removed_ms:.0f} ms, "
                f"by hand {hand_ms[-1]:.0f} ms",
                flush=True,
            )
    return agent_runs, hand_ms


if __name__ == "__main__":
    raise SystemExit(main())
