"""What every benchmark shares: a scratch agent with the example image, the raw runtime's
bundle of the same rootfs, the moments the agent's containers are removed, and the report
(both figures, their ratio, one JSON line)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jobagent_client import JobAgentClient

from agent.domain import CommandSpec, Resources
from agent.runtime.bundle import build_config, resolve_process
from agent.runtime.images import ImageConfig
from agent.runtime.limits import DEFAULT_PIDS_LIMIT, DEFAULT_TMP_SIZE
from tests import tools
from tests.e2e.harness import REQUIRED_BINARIES, AgentProcess, build_example_image, sweep


@dataclass
class Bench:
    """A running scratch agent and the paths around it."""

    root: Path
    agent: AgentProcess
    client: JobAgentClient
    layout: Path

    def register(self, name: str, image: str = "busybox:latest", pull: str = "never") -> None:
        """Registers a job `name` that runs /bin/true from `image` (already in the store,
        unless `pull` says otherwise)."""
        self.client.register(
            f"version: v1\ndeployment: bench\nservices:\n  {name}:\n    rtype: job\n"
            f"    image: {{name: '{image}', pull_policy: {pull}}}\n"
            "    command: {entrypoint: [/bin/true]}\n",
            replace=True,
        )

    def rootfs(self) -> Path:
        """The unpacked rootfs of the example image in the agent's store."""
        (rootfs,) = (self.agent.data_dir / "images" / "rootfs").glob("sha256-*/rootfs")
        return rootfs

    @property
    def raw_state(self) -> Path:
        """The raw runtime's state root: beside the agent's own, on the same tmpfs (as
        youki's default, /run/youki, is on most hosts)."""
        return self.agent.paths.volatile / "raw-state"

    def raw_bundle(self, rootfs: Path, name: str = "raw") -> Path:
        """A bundle over `rootfs`, configured as the agent configures its containers; each
        name has its own bundle and cgroup, so that bundles can run side by side."""
        bundle = self.root / "bundles" / name
        bundle.mkdir(parents=True, exist_ok=True)
        process = resolve_process(ImageConfig(), CommandSpec(entrypoint=("/bin/true",)), {}, rootfs)
        config = build_config(
            process,
            rootfs,
            name,
            f"/jobagent-bench/{name}",
            Resources(pids_limit=DEFAULT_PIDS_LIMIT),
            tmp_size=DEFAULT_TMP_SIZE,
            runtime=Path(self.agent.runtime).name,
        )
        config["root"]["readonly"] = True
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle


# ext4's inode flags (linux/fs.h): FS_IOC_GETFLAGS and FS_IOC_SETFLAGS, and FS_TOPDIR_FL.
GET_FLAGS, SET_FLAGS, TOP_DIRECTORY = 0x80086601, 0x40086602, 0x00020000


def scratch_parent() -> Path:
    """Where each run's scratch directory is made: a directory of the temporary one that
    ext4 is told holds unrelated hierarchies (FS_TOPDIR_FL), so that each run's directory
    lands in a block group of its own (Orlov's choice) instead of beside the last runs'.

    On an ext4 without a journal, every new inode is searched for past the free inodes of
    its group deleted in the last one to six minutes; the previous runs' removals (thousands
    of inodes: the agent's logs, its store, the unpacked image) put that search on the next
    run's agent, as CPU time per job that a group of its own avoids. Elsewhere
    the flag is refused or ignored, and changes nothing."""
    parent = Path(tempfile.gettempdir()) / "jobagent-bench"
    parent.mkdir(exist_ok=True)
    with contextlib.suppress(OSError):
        descriptor = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            (flags,) = struct.unpack("i", fcntl.ioctl(descriptor, GET_FLAGS, bytes(4)))
            if not flags & TOP_DIRECTORY:
                fcntl.ioctl(descriptor, SET_FLAGS, struct.pack("i", flags | TOP_DIRECTORY))
        finally:
            os.close(descriptor)
    return parent


@contextmanager
def scratch_agent(
    runtime: str, *agent_args: str, before_start: Callable[[Path], None] | None = None
) -> Iterator[Bench]:
    """An agent on a scratch data directory whose store holds busybox:latest;
    `before_start` may fill the data directory first."""
    if absent := tools.missing(*REQUIRED_BINARIES):
        raise SystemExit(f"bench: cannot run, missing: {absent}")
    with tempfile.TemporaryDirectory(prefix="run-", dir=scratch_parent()) as scratch:
        root = Path(scratch)
        layout = build_example_image(root / "image")
        agent = AgentProcess(root / "agent", runtime, extra_args=agent_args)
        agent.data_dir.mkdir()
        agent.import_image(f"oci:{layout}:latest", "busybox:latest")
        if before_start is not None:
            before_start(agent.data_dir)
        agent.start()
        try:
            with agent.client() as client:
                yield Bench(root, agent, client, layout)
        finally:
            agent.stop()
            sweep(agent)


def agent_run_ms(client: JobAgentClient, job: str) -> float:
    """Milliseconds from TriggerJob to the terminal event on WatchExecution."""
    started = time.perf_counter()
    final = client.wait(client.trigger(job).id)
    elapsed = (time.perf_counter() - started) * 1000
    assert final.status == "completed", final
    return elapsed


def container_of(execution_id: str) -> str:
    """The container of an execution's first attempt, as the agent names it."""
    return f"ja-{execution_id}"


# inotify(7): a directory's entry deleted, the watch gone; struct inotify_event's head.
IN_DELETE, IN_IGNORED, IN_CLOEXEC = 0x200, 0x8000, 0o2000000
EVENT_HEAD = struct.Struct("iIII")


class RemovalWatch:
    """When each of the agent's containers was removed, as this process's clock saw it.

    The API gives no moment of a container's removal: the terminal event comes before it
    (the outcome is recorded first), the slot is freed then too, and the running gauge
    counts executions by status. The agent's last step of a removal is deleting the
    container's writable layer (`<data dir>/containers/<container id>`, after the runtime's
    `delete` and the bundle's unmount and removal), so a thread here waits on inotify for
    that directory's deletion and notes the moment each one is read."""

    def __init__(self, directory: Path) -> None:
        """Watches `directory` (the agent's writable layers) until `close`."""
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self._wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), IN_DELETE)
        if self._wd < 0:
            os.close(self._fd)
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self._removed: dict[str, float] = {}
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="removals", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except OSError:
                return
            now = time.perf_counter()
            names: list[str] = []
            offset, ended = 0, False
            while offset < len(data):
                _, mask, _, length = EVENT_HEAD.unpack_from(data, offset)
                start = offset + EVENT_HEAD.size
                name = data[start : start + length].rstrip(b"\0")
                offset = start + length
                ended = ended or bool(mask & IN_IGNORED)
                if mask & IN_DELETE:
                    names.append(os.fsdecode(name))
            with self._changed:
                self._removed.update(dict.fromkeys(names, now))
                self._changed.notify_all()
            if ended:
                return

    def removed_at(self, container_id: str, timeout: float = 30.0) -> float:
        """The perf_counter moment `container_id` was removed (waiting for it)."""
        with self._changed:
            if not self._changed.wait_for(lambda: container_id in self._removed, timeout):
                raise TimeoutError(f"container {container_id} was not removed in {timeout} s")
            return self._removed.pop(container_id)

    def last_removed_at(self, container_ids: Iterable[str], timeout: float = 60.0) -> float:
        """The moment the last of `container_ids` was removed (waiting for all of them)."""
        return max(self.removed_at(container_id, timeout) for container_id in container_ids)

    def close(self) -> None:
        """Ends the watch (its IN_IGNORED ends the thread) and closes the descriptor."""
        self._libc.inotify_rm_watch(self._fd, self._wd)
        self._thread.join(5)
        os.close(self._fd)


@contextmanager
def removal_watch(bench: Bench) -> Iterator[RemovalWatch]:
    """A RemovalWatch of the agent's writable layers for the length of a `with`."""
    watch = RemovalWatch(bench.agent.paths.writable)
    try:
        yield watch
    finally:
        watch.close()


@dataclass(frozen=True)
class AgentRun:
    """One execution's milliseconds from TriggerJob to its terminal event, and to its
    container's removal."""

    terminal_ms: float
    removed_ms: float


def agent_run(client: JobAgentClient, job: str, removals: RemovalWatch) -> AgentRun:
    """Runs `job` once: TriggerJob, the terminal event on WatchExecution, then the removal
    of its container (the raw runtime's `run` includes its `delete`)."""
    started = time.perf_counter()
    execution = client.trigger(job)
    final = client.wait(execution.id)
    terminal = time.perf_counter()
    assert final.status == "completed", final
    removed = removals.removed_at(container_of(execution.id))
    return AgentRun((terminal - started) * 1000, (removed - started) * 1000)


class RawRunHung(Exception):
    """`<runtime> run` did not return, even with its lost SIGCHLD sent again."""


# youki 0.7's `run` can miss its child's exit when several run at once: it waits in
# sigtimedwait for a SIGCHLD that came before it looked, with the child a zombie. Such a
# run is sent SIGCHLD again (only then: a signal to a healthy run would change what is
# measured), so the baseline measures the runtime rather than that race.
POLL_SECONDS = 0.02


def raw_run_ms(
    runtime: str, state_root: Path, bundle: Path, container_id: str, timeout: float = 10.0
) -> float:
    """Milliseconds of `<runtime> run` (create, start, wait, delete) of a bundle."""
    argv = [runtime, "--root", str(state_root)]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*argv, "run", "--bundle", str(bundle), container_id],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    zombie_seen = False
    while True:
        try:
            _, stderr = process.communicate(timeout=POLL_SECONDS)
            break
        except subprocess.TimeoutExpired:
            if time.perf_counter() - started > timeout:
                process.kill()
                process.wait()
                subprocess.run([*argv, "delete", "--force", container_id], capture_output=True)
                raise RawRunHung(container_id) from None
            # A zombie child on two polls in a row: its exit was missed.
            zombie = _has_zombie_child(process.pid)
            if zombie and zombie_seen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCHLD)
            zombie_seen = zombie
    elapsed = (time.perf_counter() - started) * 1000
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, process.args, stderr=stderr)
    return elapsed


def _has_zombie_child(pid: int) -> bool:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return False
    for child in children:
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        if stat.rpartition(")")[2].split()[0] == "Z":
            return True
    return False


RESULTS = Path("bench/results")


def report(
    bench: str,
    title: str,
    agent: float,
    baseline: float,
    unit: str,
    n: int,
    baseline_name: str,
    agent_samples: Sequence[float] = (),
    baseline_samples: Sequence[float] = (),
    beside: Mapping[str, tuple[str, float]] | None = None,
    **extra: object,
) -> None:
    """Prints both figures, their ratio, and one JSON line a machine can read; keeps the
    samples in bench/results/<bench>.json and draws them in bench/results/<bench>.png.

    `beside` holds the agent's other figures in the same unit, printed under its own with
    their ratio to the baseline: key -> (what it measures, value). The JSON line has each
    as `<key>` and `<key>_ratio`."""
    ratio = agent / baseline
    print(title)
    print(f"  agent    {agent:10.2f} {unit}")
    print(f"  baseline {baseline:10.2f} {unit}  ({baseline_name})")
    print(f"  ratio    {ratio:10.2f}")
    figures: dict[str, float] = {}
    for key, (what, value) in (beside or {}).items():
        print(f"  beside   {value:10.2f} {unit}  ratio {value / baseline:.2f}  ({what})")
        figures[key] = round(value, 2)
        figures[f"{key}_ratio"] = float(f"{value / baseline:.3g}")
    # Three significant digits, so that a ratio far below 1 does not print as 0.0.
    record = {
        "bench": bench,
        **extra,
        "agent": round(agent, 2),
        "baseline": round(baseline, 2),
        "ratio": float(f"{ratio:.3g}"),
        **figures,
        "unit": unit,
        "n": n,
    }
    print(json.dumps(record))
    _keep(
        bench, title, record, {"agent": list(agent_samples), baseline_name: list(baseline_samples)}
    )


def report_value(
    bench: str,
    title: str,
    value: float,
    unit: str,
    n: int,
    samples: Mapping[str, Sequence[float]] | None = None,
    **extra: object,
) -> None:
    """For a figure with a target rather than a baseline (P6, P7): the value and its JSON
    line, with the samples kept and drawn as for `report`."""
    print(title)
    print(f"  value    {value:10.2f} {unit}")
    for key, item in extra.items():
        print(f"  {key:<8} {item}")
    record = {"bench": bench, **extra, "value": round(value, 2), "unit": unit, "n": n}
    print(json.dumps(record))
    _keep(bench, title, record, {name: list(values) for name, values in (samples or {}).items()})


def _keep(
    bench: str, title: str, record: Mapping[str, object], samples: Mapping[str, list[float]]
) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"title": title, "record": record, "machine": machine(), "samples": samples}
    (RESULTS / f"{bench}.json").write_text(json.dumps(result, indent=1))
    chart(RESULTS / f"{bench}.png", title, record, samples)


def machine() -> dict[str, object]:
    """Where the figures were measured."""
    uname = os.uname()
    return {
        "cpus": os.cpu_count(),
        "kernel": uname.release,
        "arch": uname.machine,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
    }


def chart(
    path: Path, title: str, record: Mapping[str, object], samples: Mapping[str, list[float]]
) -> None:
    """A picture of the samples: their distributions side by side, or bars of the figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    drawn = {name: values for name, values in samples.items() if len(values) > 1}
    if drawn:
        axes.violinplot(list(drawn.values()), showmedians=True)
        for index, values in enumerate(drawn.values(), start=1):
            axes.scatter([index] * len(values), values, s=6, alpha=0.4)
        axes.set_xticks(range(1, len(drawn) + 1), [name[:40] for name in drawn])
    else:
        names = [name for name in ("agent", "baseline", "value") if name in record]
        axes.bar(names, [float(record[name]) for name in names])  # type: ignore[arg-type]
    axes.set_ylabel(str(record["unit"]))
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
