"""OCI bundles: the container's config.json and its copy-on-write root filesystem."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import shutil
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.domain import CommandSpec, IdRange, Resources
from agent.hostfs import make_dir
from agent.privileges import ALL_CAPABILITIES
from agent.runtime import seccomp, syscalls
from agent.runtime.imagefiles import (
    ImageFileError,
    check_image_file,
    mounted_over,
    read_image_file,
)
from agent.runtime.images import ImageConfig

log = logging.getLogger(__name__)

# The link, in a container's bundle, to the image rootfs under its overlay.
LOWER_LINK = "lower"
# In a bundle with a user namespace: the link to the image rootfs, and the mount point of
# its idmapped view (the overlay's lower layer then).
IMAGE_LINK = "image"
IDMAPPED_IMAGE = "image-idmapped"
# overlayfs's option for an upper layer that need not survive a crash (Linux 5.10).
OVERLAY_VOLATILE = "volatile"
# In a bundle with a user namespace: where the job's volumes are mounted for the runtime to
# bind (the range's root reaches them there; their place in the data directory is root's).
VOLUME_MOUNTS = "volumes"
# The umask of a job's process, as a shell's and other runtimes' default.
CONTAINER_UMASK = 0o022

CPU_PERIOD = 100_000
NAMESPACES = ["pid", "network", "ipc", "uts", "mount"]
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# containerd's default capability set.
DEFAULT_CAPABILITIES = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
# containerd's and moby's masked paths: what tells of the host's hardware, kernel memory,
# keys and timers (/proc/interrupts as in their latest releases).
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
# What the runtime itself reads in the container's root as the container starts.
ACCOUNT_TABLES = ("/etc/passwd", "/etc/group")
# HOME where the image's /etc/passwd names none for the user (as the runtimes default).
ROOT_HOME = "/"
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
TMP = "/tmp"


@dataclass(frozen=True)
class ProcessSpec:
    """The container's process: argv, environment, working directory and user."""

    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str
    uid: int = 0
    gid: int = 0


def resolve_process(
    image: ImageConfig,
    command: CommandSpec,
    env: Mapping[str, str],
    rootfs: Path,
    user: str = "",
) -> ProcessSpec:
    """Combines the image's config with the job's command and env, as Docker does.

    An entrypoint from the spec replaces the image's and drops the image's CMD; args from
    the spec replace CMD. The spec's env is layered over the image's. HOME, unless that
    env sets it, is the user's home in the image's /etc/passwd (`/` without one): left
    unset or empty, the runtime would look it up itself, reading the container's
    /etc/passwd as it creates the container.
    """
    entrypoint = command.entrypoint or image.entrypoint
    if command.args:
        args = command.args
    elif command.entrypoint:
        args = ()
    else:
        args = image.cmd
    argv = (*entrypoint, *args)
    if not argv:
        raise ValueError("neither the spec nor the image names a command to run")
    merged: dict[str, str] = {}
    for item in image.env or (DEFAULT_PATH,):
        key, _, value = item.partition("=")
        merged[key] = value
    merged.update(env)
    merged.setdefault("PATH", DEFAULT_PATH.partition("=")[2])
    for table in ACCOUNT_TABLES:
        try:
            check_image_file(rootfs, table)
        except ImageFileError as error:
            raise ValueError(f"{error}: the runtime reads it as the container starts") from None
    uid, gid, home = _resolve_user(user or image.user, rootfs)
    if not merged.get("HOME"):
        merged["HOME"] = home if home is not None else _home_of_uid(rootfs, uid)
    return ProcessSpec(
        args=argv,
        env=tuple(f"{key}={value}" for key, value in merged.items()),
        cwd=command.workdir or image.workdir or "/",
        uid=uid,
        gid=gid,
    )


def build_config(
    process: ProcessSpec,
    rootfs: Path,
    hostname: str,
    cgroups_path: str,
    resources: Resources | None = None,
    annotations: Mapping[str, str] | None = None,
    mounts: Sequence[Mapping[str, Any]] = (),
    host_network: bool = False,
    privileged: bool = False,
    extra_capabilities: Sequence[str] = (),
    tmp_size: int | None = None,
    runtime: str = "runc",
    id_range: IdRange | None = None,
) -> dict[str, Any]:
    """Returns a runtime-spec config.json, hardened unless `privileged`: containerd's
    default capabilities (plus `extra_capabilities`), no_new_privileges, masked and
    read-only /proc paths, the default seccomp profile for those capabilities, and no
    network but loopback (unless `host_network`); the job's `mounts` come after the
    standard ones, and replace the /tmp tmpfs (`tmp_size` bytes) when one is at /tmp.
    `runtime` names the OCI runtime, whose reading of the seccomp profile differs. With
    an `id_range`, the container gets a user namespace whose ids 0.. are that range's.
    Raises ValueError when an account table of the container's `rootfs` leads under one of
    its mounts (check_account_tables)."""
    linux: dict[str, Any] = {}
    namespaces = ["pid", "ipc", "uts", "mount"] if host_network else list(NAMESPACES)
    if id_range is not None:
        namespaces.append("user")
        linux.update(id_mappings(id_range))
    granted = (
        held_capabilities()
        if privileged
        else (
            *DEFAULT_CAPABILITIES,
            *(c for c in extra_capabilities if c not in DEFAULT_CAPABILITIES),
        )
    )
    capabilities = {name: list(granted) for name in ("bounding", "effective", "permitted")}
    if not privileged:
        linux |= {
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp.default_profile(granted, runtime),
        }
    standard = _default_mounts(tmp_size, sysfs=id_range is None or not host_network)
    if any(mount.get("destination", "").rstrip("/") == TMP for mount in mounts):
        standard = [mount for mount in standard if mount["destination"] != TMP]
    all_mounts = [*standard, *(dict(mount) for mount in mounts)]
    check_account_tables(rootfs, all_mounts)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            # The agent's children run under umask 077 (agent.hostfs); the job gets the
            # usual one.
            "user": {"uid": process.uid, "gid": process.gid, "umask": CONTAINER_UMASK},
            "args": list(process.args),
            "env": list(process.env),
            "cwd": process.cwd,
            "capabilities": capabilities,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": not privileged,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": hostname,
        "mounts": all_mounts,
        "annotations": dict(annotations or {}),
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": _linux_resources(resources or Resources()),
            "namespaces": [{"type": kind} for kind in namespaces],
            **linux,
        },
    }


def check_account_tables(rootfs: Path, mounts: Sequence[Mapping[str, Any]]) -> None:
    """Refuses account tables of the container's `rootfs` that lead (through links, or
    their directories) under one of its `mounts`: there the runtime would read what is
    mounted (its /dev's devices, /proc, a job's volume), not the file the image's checks
    saw, and it reads them before the container is created (an endless device holds the
    create for good). Raises ValueError naming the table, where it leads and the mount."""
    destinations = {str(mount.get("destination", "")): mount for mount in mounts}
    for table in ACCOUNT_TABLES:
        try:
            found = mounted_over(rootfs, table, destinations)
        except ImageFileError as error:
            raise ValueError(f"{error}: the runtime reads it as the container starts") from None
        if found is not None:
            reached, point = found
            kind = destinations[point].get("type") or "bind"
            raise ValueError(
                f"{table} in the image leads to {reached}, under {point}, where the container "
                f"has a {kind} mount of its own: the runtime reads it as the container starts"
            )


def id_mappings(id_range: IdRange) -> dict[str, Any]:
    """The runtime-spec `linux.uidMappings` and `gidMappings` of a user namespace whose ids
    0 to size - 1 are the host's `id_range`."""
    mapping = [{"containerID": 0, "hostID": id_range.start, "size": id_range.size}]
    return {"uidMappings": mapping, "gidMappings": mapping}


@functools.cache
def held_capabilities() -> tuple[str, ...]:
    """The capabilities in the agent's own bounding set: what a privileged container gets
    (as containerd does; asking for more than the agent holds fails at capset)."""
    try:
        status = Path("/proc/self/status").read_text()
        bounding = int(status.split("CapBnd:", 1)[1].split()[0], 16)
    except (OSError, IndexError, ValueError):
        return tuple(ALL_CAPABILITIES)
    return tuple(name for bit, name in enumerate(ALL_CAPABILITIES) if bounding >> bit & 1)


def _linux_resources(resources: Resources) -> dict[str, Any]:
    """The cgroup settings: CPU quota per 100 ms period, memory without swap, pids."""
    limits: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if resources.cpu is not None:
        limits["cpu"] = {
            "quota": max(1000, round(resources.cpu * CPU_PERIOD)),
            "period": CPU_PERIOD,
        }
    if resources.memory_bytes is not None:
        limits["memory"] = {"limit": resources.memory_bytes, "swap": resources.memory_bytes}
    if resources.pids_limit is not None:
        limits["pids"] = {"limit": resources.pids_limit}
    return limits


def _default_mounts(tmp_size: int | None, sysfs: bool = True) -> list[dict[str, Any]]:
    """The standard mounts. Without `sysfs`, /sys is the host's bound read-only: a user
    namespace may mount a sysfs only with a network namespace of its own."""
    tmp_options = ["nosuid", "nodev", "mode=1777"]
    if tmp_size is not None:
        tmp_options.append(f"size={tmp_size}")

    def mount(destination: str, kind: str, source: str, *options: str) -> dict[str, Any]:
        return {
            "destination": destination,
            "type": kind,
            "source": source,
            "options": list(options),
        }

    return [
        mount("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
        mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ),
        mount("/dev/shm", "tmpfs", "shm", "nosuid", "noexec", "nodev", "mode=1777", "size=65536k"),
        mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro")
        if sysfs
        else mount("/sys", "bind", "/sys", "rbind", "nosuid", "noexec", "nodev", "ro"),
        mount(TMP, "tmpfs", "tmpfs", *tmp_options),
    ]


def _resolve_user(user: str, rootfs: Path) -> tuple[int, int, str | None]:
    """Resolves an image's User ("1000", "1000:1000", "app", "app:app") against its rootfs:
    uid, gid, and the home of a user given by name (None for a number)."""
    if not user:
        return 0, 0, None
    name, _, group = user.partition(":")
    home = None
    if name.isdigit():
        uid, gid = int(name), 0
    else:
        entry = _find_entry(rootfs, "passwd", name)
        uid, gid = int(entry[2]), int(entry[3])
        home = _home_field(entry)
    if group:
        gid = int(group) if group.isdigit() else int(_find_entry(rootfs, "group", group)[2])
    return uid, gid, home


def _home_of_uid(rootfs: Path, uid: int) -> str:
    """The home of the first entry for `uid` in the image's /etc/passwd, as the runtimes
    would find it; `/` when there is none or the file cannot be read."""
    try:
        content = read_image_file(rootfs, "/etc/passwd")
    except (OSError, ImageFileError):
        return ROOT_HOME
    for line in content.decode(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) > 5 and fields[2] == str(uid):
            return _home_field(fields)
    return ROOT_HOME


def _home_field(entry: list[str]) -> str:
    """The home directory of a passwd entry; `/` where it names none."""
    return entry[5] if len(entry) > 5 and entry[5] else ROOT_HOME


def _find_entry(rootfs: Path, table: str, name: str) -> list[str]:
    """The fields of `name` in the image's /etc/`table`, read inside the image's root."""
    try:
        lines = read_image_file(rootfs, f"/etc/{table}").decode(errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    except ImageFileError as error:
        raise ValueError(f"cannot look up {name!r}: {error}") from None
    except OSError as error:
        raise ValueError(f"cannot read the image's /etc/{table}: {error.strerror}") from None
    for line in lines:
        fields = line.split(":")
        if fields[0] == name and len(fields) > 3:
            return fields
    raise ValueError(f"{name!r} is not in the image's /etc/{table}")


def mount_overlay(lower: Path, upper: Path, work: Path, merged: Path) -> None:
    """Mounts a writable overlay of the read-only image rootfs for one container.

    The overlay is volatile where the kernel has the option (Linux 5.10): its upper layer
    goes with the container, so no sync waits for it. Otherwise its unmount, at every
    container's end, would syncfs(2) the data directory's filesystem: write back and wait
    for every dirty page there, other jobs' writes included (a job writing gigabytes would
    hold up every other container's removal), as would a syncfs(2) in the container. The
    kernel marks a volatile overlay's work directory so that it is never mounted again: a
    writable layer is used once, and a work directory that is not empty is refused here.

    The overlay's root directory is its upper directory, which therefore gets the mode and
    owner of the image's root rather than what the agent's umask gives a new directory.

    The layers are named in the mount options by links beside `merged` (`lower`, `upper`,
    `work`), given relative to that directory: the host's mount table then shows a short
    line for each container (the kernel renders the whole table each time the runtime
    reads it, several times per call: ~460 bytes per container with full paths), and the
    options stay far from the page-size limit on mount data whatever the data directory."""
    for directory in (upper, work, merged):
        make_dir(directory)
    with os.scandir(work) as entries:
        if next(entries, None) is not None:
            raise OSError(errno.EEXIST, f"{work} holds an earlier overlay's work: not reused")
    root = os.stat(lower)
    os.chown(upper, root.st_uid, root.st_gid)
    os.chmod(upper, stat.S_IMODE(root.st_mode))
    links = merged.parent
    for name, target in ((LOWER_LINK, lower), ("upper", upper), ("work", work)):
        _link(links / name, target)
    layers = f"lowerdir={LOWER_LINK},upperdir=upper,workdir=work"
    with syscalls.working_directory(links):
        if _volatile.refused:
            syscalls.mount("overlay", merged, "overlay", 0, layers)
            return
        try:
            syscalls.mount("overlay", merged, "overlay", 0, f"{layers},{OVERLAY_VOLATILE}")
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
            # Maybe the option (a kernel before 5.10), maybe the overlay itself: a plain
            # mount tells, on a work directory as it was (the refused one may have begun it).
            shutil.rmtree(work)
            make_dir(work)
            syscalls.mount("overlay", merged, "overlay", 0, layers)
            _volatile.refuse()


class _VolatileOption:
    """Whether the kernel refused overlayfs' volatile option (once it did, every overlay is
    plain: one mount call each, and one warning in all)."""

    def __init__(self) -> None:
        self.refused = False
        self._lock = threading.Lock()

    def refuse(self) -> None:
        """Records the refusal, and warns of what it costs (once, whichever of the worker
        threads that mount overlays meanwhile records it first)."""
        with self._lock:
            if self.refused:
                return
            self.refused = True
        log.warning(
            "the kernel refuses overlayfs' volatile option (Linux 5.10): each container's "
            "overlay is plain, and its unmount syncs the data directory's filesystem"
        )


_volatile = _VolatileOption()


def mount_idmapped_image(rootfs: Path, directory: Path, userns_fd: int) -> Path:
    """Mounts a read-only view of the image `rootfs` in the bundle `directory` whose owners
    are shifted by the user namespace `userns_fd` (the image's root shows as the range's
    root), and returns where: the lower layer of the container's overlay. The image itself
    stays shared by every container and untouched. Raises OSError (EINVAL, EOPNOTSUPP)
    where the kernel or the image's filesystem cannot idmap."""
    view = directory / IDMAPPED_IMAGE
    make_dir(view)
    # First, so that the image is known to be in use whatever the mount does.
    _link(directory / IMAGE_LINK, rootfs)
    syscalls.mount_idmapped(rootfs, view, userns_fd, readonly=True)
    return view


def unmount_bundle(directory: Path) -> None:
    """Unmounts what the bundle `directory` holds: the container's rootfs, the volumes'
    mount points, the idmapped image; raises OSError when one stays mounted (the bundle
    must not be removed then: a removal would reach into what is mounted)."""
    points = [directory / "rootfs"]
    with contextlib.suppress(FileNotFoundError):
        points.extend(sorted((directory / VOLUME_MOUNTS).iterdir()))
    points.append(directory / IDMAPPED_IMAGE)
    for point in points:
        syscalls.unmount(point)


def overlay_lower(directory: Path) -> Path | None:
    """The image rootfs under the overlay that mount_overlay made in `directory`, if any
    (through its idmapped view in a bundle with a user namespace)."""
    for name in (IMAGE_LINK, LOWER_LINK):
        try:
            return Path(os.readlink(directory / name))
        except OSError:
            continue
    return None


def _link(link: Path, target: Path) -> None:
    try:
        link.symlink_to(target)
    except FileExistsError:  # a bundle prepared again
        link.unlink()
        link.symlink_to(target)
