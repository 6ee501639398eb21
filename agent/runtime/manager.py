"""ContainerManager: the runtime layer's one entry point for the executor.

It turns a ContainerRequest into a running container (image, bundle, conmon, start),
waits for it, stops it and removes it, keeping the log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import diskspace, faults
from agent.domain import (
    ID_RANGE_SIZE,
    CommandSpec,
    IdRange,
    ImageSpec,
    Mount,
    MountKind,
    Resources,
)
from agent.hostfs import PRIVATE_DIR, READ_ONLY_FILE, make_dir, tighten, write_file
from agent.runtime import binds, bundle, syscalls
from agent.runtime.cgroups import oom_kill_count
from agent.runtime.errors import (
    CommandError,
    ContainerCreateError,
    ContainerStartError,
    MonitorLost,
    RuntimeLayerError,
)
from agent.runtime.images import Image, ImageStore, PruneResult
from agent.runtime.limits import JobLimits
from agent.runtime.monitor import ConmonMonitor, MonitorPaths
from agent.runtime.oci import UNREADABLE_STATE, OciRuntime
from agent.runtime.process import off_loop, off_loop_cancelling
from agent.runtime.shifted import ShiftedCopies
from agent.runtime.userns import IdMapping, NamespaceCache, shift_tree
from agent.runtime.volatile import VOLATILE_ROOT

log = logging.getLogger(__name__)

KILL_SIGNAL = "SIGKILL"
# A container does not start when its log disk has less room than this: its output would be lost.
MIN_LOG_SPACE = 1 << 20
DEFAULT_STOP_SIGNAL = "SIGTERM"
# How often, and from what first pause (doubling), an unreadable runtime state is asked again.
STATE_TRIES = 6
STATE_RETRY_SECONDS = 0.25
# Where the stop signal is kept, so that a restarted agent stops a container the same way.
STOP_SIGNAL_ANNOTATION = "org.opencontainers.image.stopSignal"
# The bundles and their parent in the volatile directory: searchable, not listable, so that
# the root of a job's user namespace reaches its own bundle (which is 0710, root and the
# range's root group) to mount its rootfs and volumes from there.
BUNDLE_PARENT_MODE = 0o711
BUNDLE_MODE = 0o710
# What mount_setattr answers where the kernel or a filesystem cannot idmap.
IDMAP_UNSUPPORTED = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM)
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
    # The host ids the container's user namespace maps 0.. to; None: the host's namespace.
    id_range: IdRange | None = None


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
        *,
        conmon: str = "conmon",
        images: ImageStore | None = None,
        limits: JobLimits | None = None,
        bind_allowlist: tuple[str, ...] = (),
    ) -> None:
        self.paths = paths
        self.limits = limits or JobLimits()
        # Bind sources are resolved beneath these at each run (agent.runtime.binds).
        self.bind_roots = binds.BindRoots(bind_allowlist)
        self.images = images or ImageStore(paths.images)
        self.runtime = OciRuntime(runtime_binary, paths.runtime_state, paths.binaries)
        self.monitor = ConmonMonitor(conmon, self.runtime, paths.exits, paths.sockets)
        # Told how long each pull took and whether it worked (metrics).
        self.observe_pull: Callable[[float, bool], None] | None = None
        self._namespaces = NamespaceCache()
        self._shifted = ShiftedCopies()
        # What containers wrote (set-uid files included) and what describes them: root's
        # only; but the bundles and their parent are searchable (see BUNDLE_PARENT_MODE):
        # what else lies in that parent is 0700 of its own.
        searchable = (paths.bundles.parent, paths.bundles)
        for directory in (paths.volatile, paths.writable, paths.volumes):
            if directory not in searchable:
                make_dir(directory)
                tighten(directory, PRIVATE_DIR)
        for directory in searchable:
            make_dir(directory, BUNDLE_PARENT_MODE)
            os.chmod(directory, BUNDLE_PARENT_MODE)

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

    async def run(self, request: ContainerRequest, image: Image) -> None:
        """Prepares the bundle, creates the container under conmon and starts its process,
        in one worker thread: one hand-off for the whole, where each costs the loop about
        as much CPU as a spawn. Raises ContainerCreateError, after removing whatever was
        prepared, or ContainerStartError (the container is left created). A caller
        cancelled during the create has the create's processes killed and the container
        removed (ContainerCreateError); one cancelled after the create leaves the container
        created, its process not started; one cancelled during the start waits for it to
        end, so that whether the process runs is known."""
        cancelled = threading.Event()

        def create_then_start() -> None:
            self._create(request, image, cancelled)
            faults.hit("created")
            if not cancelled.is_set():
                self._start_here(request.container_id)

        try:
            await off_loop_cancelling(create_then_start, cancelled.set)
        except ContainerCreateError:
            await self.remove(request.container_id)
            raise

    def _create(
        self, request: ContainerRequest, image: Image, cancelled: threading.Event | None = None
    ) -> None:
        """The bundle, the log file's directory and room, the container under conmon (a
        create under way is killed once `cancelled` is set)."""
        try:
            self._prepare_bundle(request, image)
        except (ValueError, OSError) as error:
            raise ContainerCreateError(str(error)) from None
        try:
            make_dir(request.log_file.parent)
            free = shutil.disk_usage(request.log_file.parent).free
        except OSError as error:
            raise ContainerCreateError(f"cannot prepare the log file: {error}") from None
        if free < MIN_LOG_SPACE:
            raise ContainerCreateError(
                f"no space left for the log under {request.log_file.parent} ({free} bytes free)"
            )
        self.monitor.create_here(
            request.container_id, self._monitor_paths(request), request.log_size_max, cancelled
        )

    def _prepare_bundle(self, request: ContainerRequest, image: Image) -> None:
        """Writes the bundle: the overlay rootfs, the mounts' sources and config.json."""
        directory = self._directory(request.container_id)
        writable = self.paths.writable / request.container_id
        rootfs = directory / "rootfs"
        process = bundle.resolve_process(
            image.config, request.command, request.env, image.rootfs, request.user
        )
        ids = request.id_range
        make_dir(directory)
        make_dir(writable)
        lower = image.rootfs
        if ids is not None:
            os.chown(directory, 0, ids.start)
            os.chmod(directory, BUNDLE_MODE)
            lower = self._image_view(image, directory, ids)
        bundle.mount_overlay(lower, writable / "upper", writable / "work", rootfs)
        mounts = [
            self._oci_mount(mount, writable, index, directory, ids)
            for index, mount in enumerate(request.mounts)
        ]
        shift = 0 if ids is None else ids.start
        owner = (shift + process.uid, shift + process.gid)
        for index, (target, content) in enumerate(request.files.items()):
            source = directory / "files" / str(index)
            mounts.append(_file_mount(target, content, source, owner))
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
            ids,
        )
        write_file(directory / "config.json", json.dumps(config).encode())

    def _image_view(self, image: Image, directory: Path, ids: IdRange) -> Path:
        """The image's rootfs as the container's root sees it: its owners shifted into the
        range by an idmapped mount (shared layers, nothing copied); where the kernel or the
        image's filesystem cannot idmap, a copy with its owners shifted, made once per
        image and range (the bundle's image link keeps the image from being pruned)."""
        try:
            userns = self._namespaces.fd(IdMapping.of(ids))
            return bundle.mount_idmapped_image(image.rootfs, directory, userns)
        except OSError as error:
            if error.errno not in IDMAP_UNSUPPORTED:
                raise
        return self._shifted.get(image.rootfs, ids.start)

    def _start_here(self, container_id: str) -> None:
        """Starts a created container's process; raises ContainerStartError."""
        try:
            self.runtime.start_here(container_id, self._directory(container_id) / "runtime.log")
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

    async def started_at(self, container_id: str) -> datetime | None:
        """When the container's process was started (the runtime's record of its creation,
        a moment before), or None when it never was: the runtime does not know it, or it
        is created and not started. A stopped container counts as started: only a start
        or a kill stops one, and the kill cannot be told apart."""
        recorded = self.monitor.exit_code(container_id) is not None
        document = await self._readable_state(container_id)
        status = None if document is None else document.get("status")
        if not recorded and status not in ("running", "stopped"):
            return None
        try:
            return datetime.fromisoformat(str((document or {})["created"])).astimezone(UTC)
        except (KeyError, ValueError):
            return datetime.now(UTC)

    async def is_alive(self, container_id: str) -> bool:
        """True when the runtime knows the container and it has not stopped."""
        document = await self._readable_state(container_id)
        return document is not None and document.get("status") in ("created", "running")

    async def _readable_state(self, container_id: str) -> dict[str, Any] | None:
        """The runtime's state document, asked again while the runtime keeps a state it
        cannot report (a loaded host). Raises RuntimeLayerError when it stays unreadable:
        whether a process started is never guessed, since a wrong guess runs it twice or
        kills a live one."""
        delay = STATE_RETRY_SECONDS
        for _ in range(STATE_TRIES):
            document = await self.runtime.describe(container_id)
            if document is None or document.get("status") != UNREADABLE_STATE:
                return document
            await asyncio.sleep(delay)
            delay *= 2
        raise RuntimeLayerError(f"the runtime cannot report the state of {container_id}")

    async def stop(
        self, container_id: str, grace_seconds: float, signal: str | None = None
    ) -> None:
        """Sends the stop signal (the container's own unless given), waits up to the grace
        period, then SIGKILL. When the runtime refuses the stop signal while the container
        lives (a bundle an older agent wrote may hold an image's signal unchecked), SIGKILL
        at once: a stop never leaves the container running because of its signal."""
        if self.monitor.exit_code(container_id) is not None:
            return
        polite = signal or self._stop_signal(container_id)
        try:
            if not await self.runtime.kill(container_id, polite):
                return
        except CommandError as error:
            log.warning(
                "container %s: the stop signal %s failed (%s); sending SIGKILL",
                container_id,
                polite[:100],
                str(error).splitlines()[0][:300],
            )
            await self._kill(container_id)
            return
        # A lost monitor leaves nothing to wait for; the run's own wait reports the loss.
        with contextlib.suppress(MonitorLost):
            try:
                await asyncio.wait_for(self.monitor.wait(container_id), grace_seconds)
            except TimeoutError:
                await self._kill(container_id)

    async def _kill(self, container_id: str) -> None:
        """SIGKILL, then waits for the container's end."""
        await self.runtime.kill(container_id, KILL_SIGNAL)
        with contextlib.suppress(MonitorLost):
            await self.monitor.wait(container_id)

    async def remove(self, container_id: str, forget: bool = False) -> None:
        """Deletes the container (and waits for its conmon to exit), its bundle and what it
        wrote; keeps its log and, unless `forget` (see forget), its exit record. Safe to
        repeat. One worker thread does it all (one hand-off)."""
        await off_loop(self._remove, container_id, forget)

    def _remove(self, container_id: str, forget: bool) -> None:
        self.runtime.delete_here(container_id)
        faults.hit("removing")
        if not self.monitor.gone_here(container_id):
            log.warning("container %s: its conmon has not exited", container_id)
        self._remove_bundle(container_id)
        if forget:
            self.monitor.forget(container_id)

    def containers(self) -> list[str]:
        """The ids of every container with a bundle or a writable layer here (running, or
        left by a crash; after a reboot only the writable layer is left)."""
        return sorted(
            {
                entry.name
                for parent in (self.paths.bundles, self.paths.writable)
                for entry in parent.iterdir()
                if entry.is_dir()
            }
        )

    def disk_usage(self, container_id: str) -> int:
        """Bytes the container's writable layer and anonymous volumes take on the data disk
        (walks the files: call it from a worker thread)."""
        return diskspace.usage(self.paths.writable / container_id)

    def close(self) -> None:
        """Releases what the manager holds (running containers are left alone), and removes
        its volatile directories that nothing lives in: a data directory not used again
        leaves nothing under /run."""
        self.runtime.close()
        self._namespaces.close()
        paths = self.paths
        inner = (
            paths.runtime_state,
            paths.runtime_state.parent,
            paths.bundles,
            paths.exits,
            paths.sockets,
            paths.binaries,
        )
        for directory in (*inner, paths.volatile):
            if directory != paths.volatile and paths.volatile not in directory.parents:
                continue
            # Not empty: a container still running, or an exit not yet recorded, needs it
            # at the next start (and so its parents).
            with contextlib.suppress(OSError):
                os.rmdir(directory)

    async def forget(self, container_id: str) -> None:
        """Drops the exit record of a removed container once its outcome is stored (a file
        and a directory on the volatile tmpfs: quick enough for the event loop)."""
        self.monitor.forget(container_id)

    def _oci_mount(
        self, mount: Mount, writable: Path, index: int, directory: Path, ids: IdRange | None
    ) -> dict[str, Any]:
        """The runtime-spec mount of a job's storage entry (volumes are made on first use).

        A bind source is opened beneath its allowed directory and staged in the bundle
        `directory` (_stage_bind). With a user namespace, a new volume is owned by the
        range's root, and volumes are mounted in the bundle for the runtime to bind from
        there (youki resolves a source as the range's root, who cannot reach the data
        directory; see _volume_mount). A bind source keeps its host owners and modes: the
        job reaches what host users other than its owners may. A tmpfs is mounted by the
        runtime inside the namespace, so its root is the range's root already."""
        if mount.kind is MountKind.TMPFS:
            options = ["nosuid", "nodev"]
            if mount.size_bytes is not None:
                options.append(f"size={mount.size_bytes}")
            if mount.mode is not None:
                options.append(f"mode={mount.mode:o}")
            return {
                "destination": mount.target,
                "type": "tmpfs",
                "source": "tmpfs",
                "options": options,
            }
        if mount.kind is MountKind.BIND:
            source = self._stage_bind(mount, index, directory)
        else:
            source = (
                self.paths.volumes / mount.source
                if mount.kind is MountKind.NAMED
                else writable / "anonymous" / str(index)
            )
            created = not source.exists()
            make_dir(source, VOLUME_DIR_MODE)
            if ids is not None:
                point = directory / bundle.VOLUME_MOUNTS / str(index)
                make_dir(point.parent, BUNDLE_PARENT_MODE)
                make_dir(point, BUNDLE_PARENT_MODE)
                if created:
                    os.chown(source, ids.start, ids.start)
                self._volume_mount(source, point, ids)
                source = point
        access = "ro" if mount.readonly else "rw"
        return {
            "destination": mount.target,
            "type": "bind",
            "source": str(source),
            "options": ["rbind", access, "nosuid", "nodev"],
        }

    def _stage_bind(self, mount: Mount, index: int, directory: Path) -> Path:
        """Opens the bind source beneath its allowed directory and mounts that descriptor in
        the bundle: what was checked is what the runtime binds. Raises ValueError naming
        the storage entry."""
        staging = directory / binds.STAGING_DIR / str(index)
        try:
            # Traversable: in a user namespace, the runtime reaches it as the range's root.
            make_dir(staging.parent, BUNDLE_PARENT_MODE)
            source = self.bind_roots.open(mount.source)
            try:
                binds.stage(source, staging, mount.readonly)
            finally:
                os.close(source)
        except (binds.BindRefused, OSError) as error:
            raise ValueError(f"storage[{index}] (bind on {mount.target}): {error}") from None
        return staging

    def _volume_mount(self, volume: Path, point: Path, ids: IdRange) -> None:
        """Mounts a volume at `point` in the bundle, where the range's root reaches it. A
        volume keeps the owner it got when made: one made for another job's range is
        mounted idmapped from that range to this one; one owned by host ids (made by a job
        in the host's namespace) is moved into this range first.

        Only a range's root (an id aligned as ranges are) is mapped from: a volume whose
        root a job gave to another of its ids is bound as it is, or the mapping from that
        id would reach into the next range's ids."""
        owner = os.stat(volume).st_uid
        if owner < ID_RANGE_SIZE:
            shift_tree(volume, ids.start)
            owner = ids.start
        if owner == ids.start or owner % ids.size != ids.start % ids.size:
            syscalls.mount(str(volume), point, "", syscalls.MS_BIND, "")
        else:
            userns = self._namespaces.fd(IdMapping(owner, ids.start, ids.size))
            syscalls.mount_idmapped(volume, point, userns)

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
        try:
            binds.unstage_all(directory)
            bundle.unmount_bundle(directory)
        except OSError as error:
            # Removing the bundle now would reach into a volume, a bind source or the image.
            log.error("container %s: bundle kept: %s", container_id, error)
            return
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
    """Writes `content` beside the bundle, readable by its `owner` (the job's uid and gid,
    as the host sees them) only, and binds it read-only at `target`. Its directory is
    searchable: in a bundle with a user namespace the range's root resolves the source."""
    make_dir(source.parent, BUNDLE_PARENT_MODE)
    write_file(source, content, READ_ONLY_FILE)
    os.chown(source, *owner)
    return {
        "destination": target,
        "type": "bind",
        "source": str(source),
        "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
    }
