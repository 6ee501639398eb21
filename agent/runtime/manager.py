"""ContainerManager: the runtime layer's one entry point for the executor.

It turns a ContainerRequest into a running container (image, bundle, conmon, start),
waits for it, stops it and removes it, keeping the log file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent import diskspace
from agent.domain import CommandSpec, ImageSpec, Mount, MountKind, Resources
from agent.hostfs import PRIVATE_DIR, READ_ONLY_FILE, make_dir, tighten, write_file
from agent.runtime import bundle, syscalls
from agent.runtime.cgroups import oom_kill_count
from agent.runtime.errors import (
    CommandError,
    ContainerCreateError,
    ContainerStartError,
)
from agent.runtime.images import Image, ImageStore, PruneResult
from agent.runtime.limits import JobLimits
from agent.runtime.monitor import ConmonMonitor, MonitorPaths
from agent.runtime.oci import OciRuntime
from agent.runtime.process import off_loop
from agent.runtime.volatile import VOLATILE_ROOT

KILL_SIGNAL = "SIGKILL"
# A container does not start when its log disk has less room than this: its output would be lost.
MIN_LOG_SPACE = 1 << 20
DEFAULT_STOP_SIGNAL = "SIGTERM"
# Where the stop signal is kept, so that a restarted agent stops a container the same way.
STOP_SIGNAL_ANNOTATION = "org.opencontainers.image.stopSignal"
# A volume's own directory, as the container sees it at its target (as Docker makes them);
# its parents on the host are 0700, so no other host user reaches what a job writes there.
VOLUME_DIR_MODE = 0o755


@dataclass(frozen=True)
class ContainerRequest:
    """What the executor asks for: one container of a job's image and command."""

    container_id: str
    image: ImageSpec
    log_file: Path
    command: CommandSpec = field(default_factory=CommandSpec)
    env: Mapping[str, str] = field(default_factory=dict)
    hostname: str = ""
    resources: Resources = field(default_factory=Resources)
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    # conmon starts the log file over past this size (None: no cap).
    log_size_max: int | None = None
    mounts: tuple[Mount, ...] = ()
    host_network: bool = False
    # Read-only files the container sees at these paths (a dispatch payload).
    files: Mapping[str, bytes] = field(default_factory=dict)
    privileged: bool = False
    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExitStatus:
    """How a container's process ended."""

    exit_code: int
    oom_killed: bool = False


@dataclass(frozen=True)
class RuntimePaths:
    """Where the runtime layer keeps things: on disk under the agent's data directory what
    must last (images, what containers write, volumes), and in its volatile directory on
    a tmpfs what describes live processes (see agent.runtime.volatile)."""

    images: Path
    # Each container's overlay upper and work directories and its anonymous volumes.
    writable: Path
    volumes: Path
    volatile: Path
    # Each container's bundle: config.json, the rootfs mount point, conmon's files.
    bundles: Path
    runtime_state: Path
    exits: Path
    sockets: Path
    # Where the sealed copy of the runtime is linked under the runtime's own name.
    binaries: Path

    @classmethod
    def under(cls, data_dir: Path, runtime_name: str) -> RuntimePaths:
        """The standard layout for one data directory (its volatile part keyed by it)."""
        key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
        volatile = VOLATILE_ROOT / key
        return cls(
            images=data_dir / "images",
            writable=data_dir / "containers",
            volumes=data_dir / "volumes",
            volatile=volatile,
            bundles=volatile / "bundles",
            runtime_state=volatile / "state" / runtime_name,
            exits=volatile / "exits",
            sockets=volatile / "attach",
            binaries=volatile / "bin",
        )


class ContainerManager:
    """Creates, starts, waits for, stops and removes containers."""

    def __init__(
        self,
        paths: RuntimePaths,
        runtime_binary: str,
        conmon: str = "conmon",
        images: ImageStore | None = None,
        limits: JobLimits | None = None,
    ) -> None:
        self.paths = paths
        self.limits = limits or JobLimits()
        self.images = images or ImageStore(paths.images)
        self.runtime = OciRuntime(runtime_binary, paths.runtime_state, paths.binaries)
        self.monitor = ConmonMonitor(conmon, self.runtime, paths.exits, paths.sockets)
        # Told how long each pull took and whether it worked (metrics).
        self.observe_pull: Callable[[float, bool], None] | None = None
        # What containers wrote (set-uid files included) and what describes them: root's
        # only. Containers run as host root today; with user namespaces, the bundles' and
        # volumes' parents must become 0711 for the mapped root to reach its rootfs and
        # mount sources.
        for directory in (paths.volatile, paths.writable, paths.volumes):
            make_dir(directory)
            tighten(directory, PRIVATE_DIR)
        make_dir(paths.bundles)

    async def pull(self, image: ImageSpec) -> Image:
        """Makes the image present as its pull policy says; raises ImagePullError."""
        started = time.monotonic()
        succeeded = False
        try:
            found = await self.images.ensure(image.name, image.pull_policy)
            succeeded = True
            return found
        finally:
            if self.observe_pull is not None:
                self.observe_pull(time.monotonic() - started, succeeded)

    async def runtime_version(self) -> str:
        """The first line of `<runtime> --version`."""
        try:
            output = await self.runtime.call("--version", timeout=10)
        except CommandError as error:
            return f"unknown ({error})"
        return output.strip().splitlines()[0] if output.strip() else "unknown"

    async def prune_images(self, in_use: set[str], budget_bytes: int | None) -> PruneResult:
        """Removes unused images: all of them, or the least recently used over the budget;
        never one that a container's overlay stands on."""
        return await self.images.prune(in_use, budget_bytes, self._mounted_images())

    def _mounted_images(self) -> frozenset[Path]:
        lowers = (bundle.overlay_lower(entry) for entry in self.paths.bundles.iterdir())
        return frozenset(lower for lower in lowers if lower is not None)

    async def create(self, request: ContainerRequest, image: Image) -> None:
        """Prepares the bundle and creates the container under conmon.

        Raises ContainerCreateError, after removing whatever was prepared.
        """
        try:
            await off_loop(self._prepare_bundle, request, image)
        except (ValueError, OSError) as error:
            await self.remove(request.container_id)
            raise ContainerCreateError(str(error)) from None
        try:
            make_dir(request.log_file.parent)
            free = shutil.disk_usage(request.log_file.parent).free
        except OSError as error:
            await self.remove(request.container_id)
            raise ContainerCreateError(f"cannot prepare the log file: {error}") from None
        if free < MIN_LOG_SPACE:
            await self.remove(request.container_id)
            raise ContainerCreateError(
                f"no space left for the log under {request.log_file.parent} ({free} bytes free)"
            )
        try:
            await self.monitor.create(
                request.container_id, self._monitor_paths(request), request.log_size_max
            )
        except ContainerCreateError:
            await self.remove(request.container_id)
            raise

    def _prepare_bundle(self, request: ContainerRequest, image: Image) -> None:
        """Writes the bundle: the overlay rootfs, the mounts' sources and config.json."""
        directory = self._directory(request.container_id)
        writable = self.paths.writable / request.container_id
        rootfs = directory / "rootfs"
        process = bundle.resolve_process(
            image.config, request.command, request.env, image.rootfs, request.user
        )
        make_dir(directory)
        make_dir(writable)
        bundle.mount_overlay(image.rootfs, writable / "upper", writable / "work", rootfs)
        mounts = [self._oci_mount(mount, writable, index)
                  for index, mount in enumerate(request.mounts)]  # fmt: skip
        for index, (target, content) in enumerate(request.files.items()):
            source = directory / "files" / str(index)
            mounts.append(_file_mount(target, content, source, (process.uid, process.gid)))
        config = bundle.build_config(
            process,
            rootfs,
            request.hostname or request.container_id,
            self.limits.cgroups_path(request.container_id),
            self.limits.resources(request.resources),
            {
                **request.labels,
                STOP_SIGNAL_ANNOTATION: request.stop_signal
                or image.config.stop_signal
                or DEFAULT_STOP_SIGNAL,
            },
            mounts,
            request.host_network,
            request.privileged,
            request.capabilities,
            self.limits.tmp_size_bytes,
            Path(self.runtime.binary).name,
        )
        write_file(directory / "config.json", json.dumps(config).encode())

    async def start(self, container_id: str) -> None:
        """Starts a created container's process; raises ContainerStartError."""
        try:
            await self.runtime.start(container_id, self._directory(container_id) / "runtime.log")
        except CommandError as error:
            raise ContainerStartError(str(error)) from None

    async def wait(self, container_id: str) -> ExitStatus:
        """Waits for the container's process to end (call before remove: it reads the cgroup)."""
        code = await self.monitor.wait(container_id)
        return ExitStatus(code, self._oom_killed(container_id))

    def exit_status(self, container_id: str) -> ExitStatus | None:
        """The recorded exit of a container, or None while it runs (or never ran)."""
        code = self.monitor.exit_code(container_id)
        if code is None:
            return None
        return ExitStatus(code, self._oom_killed(container_id))

    def _oom_killed(self, container_id: str) -> bool:
        """The kernel's OOM kill count of the container's cgroup, or conmon's record of it."""
        if oom_kill_count(self.limits.cgroups_path(container_id)) > 0:
            return True
        return self.monitor.oom_killed(container_id)

    async def is_alive(self, container_id: str) -> bool:
        """True when the runtime knows the container and it has not stopped."""
        return await self.runtime.state(container_id) in ("created", "running")

    async def stop(
        self, container_id: str, grace_seconds: float, signal: str | None = None
    ) -> None:
        """Sends the stop signal (the container's own unless given), waits up to the grace
        period, then SIGKILL."""
        if self.monitor.exit_code(container_id) is not None:
            return
        if not await self.runtime.kill(container_id, signal or self._stop_signal(container_id)):
            return
        try:
            await asyncio.wait_for(self.monitor.wait(container_id), grace_seconds)
        except TimeoutError:
            await self.runtime.kill(container_id, KILL_SIGNAL)
            await self.monitor.wait(container_id)

    async def remove(self, container_id: str) -> None:
        """Deletes the container, its bundle and what it wrote; keeps its log and exit files.
        Safe to repeat."""
        await self.runtime.delete(container_id)
        await off_loop(self._remove_bundle, container_id)

    def containers(self) -> list[str]:
        """The ids of every container with a bundle or a writable layer here (running, or
        left by a crash; after a reboot only the writable layer is left)."""
        return sorted({entry.name for parent in (self.paths.bundles, self.paths.writable)
                       for entry in parent.iterdir() if entry.is_dir()})  # fmt: skip

    def disk_usage(self, container_id: str) -> int:
        """Bytes the container's writable layer and anonymous volumes take on the data disk
        (walks the files: call it from a worker thread)."""
        return diskspace.usage(self.paths.writable / container_id)

    def close(self) -> None:
        """Releases what the manager holds (running containers are left alone)."""
        self.runtime.close()

    async def forget(self, container_id: str) -> None:
        """Drops the exit record of a removed container once its outcome is stored (a file
        and a directory on the volatile tmpfs: quick enough for the event loop)."""
        self.monitor.forget(container_id)

    def _oci_mount(self, mount: Mount, writable: Path, index: int) -> dict[str, Any]:
        """The runtime-spec mount of a job's storage entry (volumes are made on first use)."""
        if mount.kind is MountKind.TMPFS:
            options = ["nosuid", "nodev"]
            if mount.size_bytes is not None:
                options.append(f"size={mount.size_bytes}")
            if mount.mode is not None:
                options.append(f"mode={mount.mode:o}")
            return {"destination": mount.target, "type": "tmpfs", "source": "tmpfs",
                    "options": options}  # fmt: skip
        if mount.kind is MountKind.BIND:
            source = Path(mount.source)
        elif mount.kind is MountKind.NAMED:
            source = self.paths.volumes / mount.source
        else:
            source = writable / "anonymous" / str(index)
        make_dir(source, VOLUME_DIR_MODE)
        access = "ro" if mount.readonly else "rw"
        return {"destination": mount.target, "type": "bind", "source": str(source),
                "options": ["rbind", access, "nosuid", "nodev"]}  # fmt: skip

    def _stop_signal(self, container_id: str) -> str:
        try:
            config = json.loads((self._directory(container_id) / "config.json").read_text())
        except (OSError, ValueError):
            return DEFAULT_STOP_SIGNAL
        return str(config.get("annotations", {}).get(STOP_SIGNAL_ANNOTATION, DEFAULT_STOP_SIGNAL))

    def _directory(self, container_id: str) -> Path:
        return self.paths.bundles / container_id

    def _remove_bundle(self, container_id: str) -> None:
        directory = self._directory(container_id)
        syscalls.unmount(directory / "rootfs")
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(self.paths.writable / container_id, ignore_errors=True)

    def _monitor_paths(self, request: ContainerRequest) -> MonitorPaths:
        directory = self._directory(request.container_id)
        return MonitorPaths(
            bundle=directory,
            log_file=request.log_file,
            runtime_log=directory / "runtime.log",
        )


def _file_mount(
    target: str, content: bytes, source: Path, owner: tuple[int, int]
) -> dict[str, Any]:
    """Writes `content` beside the bundle, readable by its `owner` (the job's uid and gid)
    only, and binds it read-only at `target`."""
    make_dir(source.parent)
    write_file(source, content, READ_ONLY_FILE)
    os.chown(source, *owner)
    return {"destination": target, "type": "bind", "source": str(source),
            "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}  # fmt: skip
