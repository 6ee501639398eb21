"""The local image store: one OCI layout of shared blobs, one unpacked rootfs per digest.

skopeo copies images into the layout (tagged by their normalised reference), each through
a staging layout of its own (agent.runtime.staging) so that a slow registry holds up only
the pulls of its own images; umoci unpacks each manifest digest once into a read-only
rootfs that containers overlay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent import faults
from agent.domain import PullPolicy
from agent.hostfs import PRIVATE_DIR, make_dir, tighten, write_file
from agent.runtime.errors import CommandError, ImagePullError
from agent.runtime.process import off_loop, run
from agent.runtime.staging import REF_NAME, StagingLayout
from agent.runtime.storelock import KeyedLocks, StoreLock
from agent.signals import signal_name

log = logging.getLogger(__name__)

DEFAULT_REGISTRY = "docker.io"
USAGE_RESOLUTION_SECONDS = 60.0


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image's config that shape the container's process."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str = ""
    user: str = ""
    stop_signal: str = ""


@dataclass(frozen=True)
class PruneResult:
    """What an image prune removed."""

    removed: tuple[str, ...]
    freed_bytes: int


@dataclass(frozen=True)
class Image:
    """An image present in the store, unpacked and ready to run."""

    reference: str
    digest: str
    rootfs: Path
    config: ImageConfig


def normalize_reference(name: str) -> str:
    """Returns the canonical form of an image name: busybox -> docker.io/library/busybox:latest.

    Local OCI layouts (oci:PATH[:TAG]) keep their form with the tag defaulting to latest.
    """
    if name.startswith("oci:"):
        path, _, tag = name[4:].partition(":")
        return f"oci:{Path(path).resolve()}:{tag or 'latest'}"
    repository, at, digest = name.partition("@")
    first, slash, _ = repository.partition("/")
    if not slash or ("." not in first and ":" not in first and first != "localhost"):
        repository = f"{DEFAULT_REGISTRY}/{repository}"
        if repository.count("/") == 1:
            repository = f"{DEFAULT_REGISTRY}/library/{repository[len(DEFAULT_REGISTRY) + 1 :]}"
    if at:
        return f"{repository}@{digest}"
    if ":" not in repository.rsplit("/", 1)[-1]:
        repository += ":latest"
    return repository


class ImageStore:
    """Pulls, keeps and unpacks images under one directory."""

    def __init__(
        self,
        root: Path,
        *,
        skopeo: str = "skopeo",
        umoci: str = "umoci",
        pull_timeout: float = 300.0,
        insecure_registries: frozenset[str] = frozenset(),
        auth_file: Path | None = None,
    ) -> None:
        self._layout = root / "oci"
        self._index_path = self._layout / "index.json"
        self._index_cache: tuple[tuple[int, int, int, int], tuple[dict[str, Any], ...]] | None
        self._index_cache = None
        # Image configs by manifest digest: a blob's content never changes under its digest.
        self._configs: dict[str, ImageConfig] = {}
        self._rootfs_dir = root / "rootfs"
        self._skopeo = skopeo
        self._umoci = umoci
        self._pull_timeout = pull_timeout
        self._insecure_registries = insecure_registries
        self._auth_file = auth_file
        self._pulls_file = root / "pulls.json"
        self._usage_file = root / "usage.json"
        self._usage_cache: dict[str, float] | None = None
        self._staging_dir = root / "staging"
        make_dir(root)
        tighten(root, PRIVATE_DIR)
        make_dir(self._rootfs_dir)
        # The store-wide lock is held only for short local steps (the index, prune); the
        # network part of a pull holds its reference's lock, an unpack its digest's.
        self._lock = StoreLock(root / "lock")
        self._pulls = KeyedLocks(root / "locks", "reference")
        self._unpacks = KeyedLocks(root / "locks", "digest")
        StagingLayout.sweep(self._staging_dir)

    async def ensure(self, name: str, policy: PullPolicy) -> Image:
        """Makes the image present (pulling as the policy says) and unpacked; returns it.

        Pulls of one reference wait for each other; pulls of others do not, however slow
        their registry is.
        """
        reference = normalize_reference(name)
        source = _source_of(reference)
        async with self._pulls.hold(reference):
            async with self._lock:  # umoci (prune) may be rewriting the index
                present = self._digest_of(reference) is not None
            if policy is PullPolicy.NEVER and not present:
                raise ImagePullError(f"image {name} is not present and pull_policy is never")
            if not present or policy is PullPolicy.ALWAYS:
                image = await self._pull(source, reference)
            elif policy is PullPolicy.NEWER and source.startswith("docker://"):
                # A tag that moved is seen by the registry's digest, not by the name.
                remote = await self._remote_digest(source)
                if remote != self._pulled_digests().get(reference):
                    image = await self._pull(source, reference)
                    async with self._lock:
                        self._remember_pull(reference, remote)
                else:
                    image = await self._present(name, reference)
            else:
                image = await self._present(name, reference)
            async with self._lock:
                self._note_use(reference)
            return image

    async def prune(
        self,
        in_use: set[str],
        budget_bytes: int | None = None,
        mounted: frozenset[Path] = frozenset(),
    ) -> PruneResult:
        """Removes images no job needs: all of them, or with a budget the least recently
        used ones until the store fits. `in_use` holds image names (any form); `mounted`
        the rootfs trees that containers' overlays stand on, which stay until they end."""
        keep = {normalize_reference(name) for name in in_use}
        async with self._lock:
            before = await off_loop(self.size_bytes)
            usage = self._usage()
            unused = sorted(
                (ref for ref in self._references() if ref not in keep),
                key=lambda ref: usage.get(ref, 0.0),
            )
            removed: list[str] = []
            for reference in unused:
                if budget_bytes is not None and await off_loop(self.size_bytes) <= budget_bytes:
                    break
                await self._remove(reference, mounted)
                removed.append(reference)
            return PruneResult(tuple(removed), max(0, before - await off_loop(self.size_bytes)))

    async def _remove(self, reference: str, mounted: frozenset[Path]) -> None:
        tag = _tag_of(reference)
        try:
            await run([self._umoci, "rm", "--image", f"{self._layout}:{tag}"])
            await run([self._umoci, "gc", "--layout", str(self._layout)])
        except CommandError as error:
            raise ImagePullError(f"removing {reference}: {error}") from None
        self._configs.clear()
        referenced = {d.replace(":", "-") for d in map(self._digest_of, self._references()) if d}
        for unpacked in self._rootfs_dir.glob("sha256-*"):
            if unpacked.name not in referenced and unpacked / "rootfs" not in mounted:
                await off_loop(shutil.rmtree, unpacked, ignore_errors=True)
        usage = self._usage()
        usage.pop(reference, None)
        self._write_json(self._usage_file, usage)

    def size_bytes(self) -> int:
        """Bytes the store takes on disk: blobs and unpacked rootfs trees."""
        total = 0
        for directory in (self._layout, self._rootfs_dir):
            for path, _, files in os.walk(directory):
                for name in files:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(path, name)).st_size
        return total

    def _manifests(self) -> list[dict[str, Any]]:
        """The layout's index entries (none before the first pull and after the last
        removal, when umoci leaves `"manifests": null`).

        The parsed index is kept while the file's identity and times stay the same: every
        job reads it, and it changes only at a pull, an import or a prune (by this process
        or another)."""
        try:
            status = os.stat(self._index_path)
        except FileNotFoundError:
            return []
        key = (status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
        if self._index_cache is None or self._index_cache[0] != key:
            manifests = json.loads(self._index_path.read_text()).get("manifests") or []
            self._index_cache = (key, tuple(manifests))
        return list(self._index_cache[1])

    def _references(self) -> list[str]:
        tags = [m.get("annotations", {}).get(REF_NAME) for m in self._manifests()]
        return [
            tag.replace("oci/", "oci:/", 1) if tag.startswith("oci/") else tag
            for tag in tags
            if tag
        ]

    def _usage(self) -> dict[str, float]:
        """When each reference was last used to run something (epoch seconds)."""
        if self._usage_cache is None:
            try:
                self._usage_cache = json.loads(self._usage_file.read_text())
            except (OSError, ValueError):
                self._usage_cache = {}
        return self._usage_cache

    def _note_use(self, reference: str) -> None:
        """Records a use; the file is rewritten only when the minute-grained record moves,
        not at every job (least-recently-used pruning needs no finer time)."""
        usage = self._usage()
        moment = time.time()
        if moment - usage.get(reference, 0.0) >= USAGE_RESOLUTION_SECONDS:
            usage[reference] = moment
            self._write_json(self._usage_file, usage)

    def _write_json(self, path: Path, data: object) -> None:
        temporary = path.with_suffix(".tmp")
        write_file(temporary, json.dumps(data).encode())
        temporary.replace(path)

    async def import_image(self, source: str, name: str) -> Image:
        """Copies an image from any skopeo source (oci:..., docker://...) under `name`."""
        reference = normalize_reference(name)
        async with self._pulls.hold(reference):
            return await self._pull(source, reference)

    def _source_flags(self, source: str, prefix: str) -> list[str]:
        """skopeo's TLS and credential flags for a source (prefix "src-" for copy)."""
        flags = []
        if _registry_of(source) in self._insecure_registries:
            flags.append(f"--{prefix}tls-verify=false")
        if self._auth_file is not None and source.startswith("docker://"):
            flags.append(f"--{prefix}authfile={self._auth_file}")
        return flags

    async def _pull(self, source: str, reference: str) -> Image:
        """Copies the image into a staging layout without the store's lock, records it in
        the store under the lock (a short local step), then unpacks it."""
        staging = await off_loop(StagingLayout.create, self._staging_dir, self._layout)
        try:
            await self._copy(source, staging.layout, reference)
            faults.hit("pull")
            async with self._lock:
                make_dir(self._layout)
                digest = await off_loop(staging.commit, self._layout, _tag_of(reference))
            return await self._unpacked(reference, digest, staging)
        finally:
            await off_loop(staging.remove)

    async def _present(self, name: str, reference: str) -> Image:
        """An image the store has, unpacked (from a staging snapshot when its rootfs is
        missing, so that the unpack holds no store-wide lock either)."""
        async with self._lock:
            digest = self._digest_of(reference)
            if digest is None:
                raise ImagePullError(f"image {name} is missing from the store")
            target = self._rootfs_dir / digest.replace(":", "-")
            if (target / "rootfs").is_dir():
                config = self._config_of(reference, digest)
                return Image(reference, digest, target / "rootfs", config)
            entry = self._entry_of(reference)
            assert entry is not None
            staging = await off_loop(StagingLayout.create, self._staging_dir, self._layout)
        try:
            staging.adopt(entry)
            return await self._unpacked(reference, digest, staging)
        finally:
            await off_loop(staging.remove)

    async def _copy(self, source: str, layout: Path, reference: str) -> None:
        argv = [
            self._skopeo,
            "copy",
            "--quiet",
            *self._source_flags(source, "src-"),
            source,
            f"oci:{layout}:{_tag_of(reference)}",
        ]
        try:
            await run(argv, timeout=self._pull_timeout)
        except CommandError as error:
            detail = error.stderr.strip() or str(error)
            if error.returncode == -1:
                detail = f"{detail} (--pull-timeout)"
            raise ImagePullError(f"pulling {source}: {detail}") from None

    async def _remote_digest(self, source: str) -> str:
        argv = [
            self._skopeo,
            "inspect",
            "--format",
            "{{.Digest}}",
            *self._source_flags(source, ""),
            source,
        ]
        try:
            return (await run(argv, timeout=self._pull_timeout)).strip()
        except CommandError as error:
            raise ImagePullError(f"checking {source}: {error.stderr.strip() or error}") from None

    def _pulled_digests(self) -> dict[str, str]:
        """The registry digest each reference had when it was last pulled for `newer`."""
        try:
            data: dict[str, str] = json.loads(self._pulls_file.read_text())
        except (OSError, ValueError):
            return {}
        return data

    def _remember_pull(self, reference: str, digest: str) -> None:
        pulls = self._pulled_digests()
        pulls[reference] = digest
        self._write_json(self._pulls_file, pulls)

    async def _unpacked(self, reference: str, digest: str, staging: StagingLayout) -> Image:
        """Unpacks the digest from `staging` once (under the digest's lock: one unpack of
        it at a time, in any process) and returns the image."""
        target = self._rootfs_dir / digest.replace(":", "-")
        async with self._unpacks.hold(digest):
            if not (target / "rootfs").is_dir():
                work = Path(tempfile.mkdtemp(dir=self._rootfs_dir, prefix=".unpack-"))
                # `raw unpack`: the root filesystem only. `umoci unpack` also writes a
                # runtime config, for which it reads the image's /etc/passwd itself, and it
                # blocks for good on a FIFO there; the agent reads the image's config from
                # its blob and its accounts inside its root (agent.runtime.imagefiles).
                try:
                    (work / "bundle").mkdir(mode=0o700)
                    image = f"{staging.layout}:{_tag_of(reference)}"
                    rootfs = str(work / "bundle" / "rootfs")
                    await run([self._umoci, "raw", "unpack", "--image", image, rootfs])
                    await off_loop(shutil.rmtree, target, ignore_errors=True)
                    (work / "bundle").rename(target)
                except CommandError as error:
                    raise ImagePullError(f"unpacking {reference}: {error}") from None
                finally:
                    await off_loop(shutil.rmtree, work, ignore_errors=True)
        config = _image_config(staging.blob, reference, digest)
        return Image(reference, digest, target / "rootfs", config)

    def _entry_of(self, reference: str) -> dict[str, Any] | None:
        """The store index's entry of a reference, None when absent."""
        tag = _tag_of(reference)
        for manifest in self._manifests():
            if manifest.get("annotations", {}).get(REF_NAME) == tag:
                return manifest
        return None

    def _digest_of(self, reference: str) -> str | None:
        entry = self._entry_of(reference)
        return None if entry is None else str(entry["digest"])

    def _blob(self, digest: str) -> Any:
        algorithm, _, hex_digest = digest.partition(":")
        return json.loads((self._layout / "blobs" / algorithm / hex_digest).read_text())

    def _config_of(self, reference: str, manifest_digest: str) -> ImageConfig:
        config = self._configs.get(manifest_digest)
        if config is None:
            config = _image_config(self._blob, reference, manifest_digest)
            self._configs[manifest_digest] = config
        return config


def _image_config(blob: Callable[[str], Any], reference: str, manifest_digest: str) -> ImageConfig:
    """The image config of a manifest, its JSON blobs read by `blob`. ImagePullError when
    the manifest or the config cannot be read as such: Go's tools take JSON that Python's
    parser refuses (5,000 levels of nesting in a field they ignore), and a field may have
    another type than the specification's."""
    try:
        manifest = blob(manifest_digest)
        config = blob(manifest["config"]["digest"]).get("config") or {}
        return ImageConfig(
            entrypoint=_strings(config, "Entrypoint"),
            cmd=_strings(config, "Cmd"),
            env=_strings(config, "Env"),
            workdir=_string(config, "WorkingDir"),
            user=_string(config, "User"),
            stop_signal=_stop_signal(reference, _string(config, "StopSignal")),
        )
    except (ValueError, RecursionError, TypeError, AttributeError, KeyError) as error:
        problem = f"{type(error).__name__}: {str(error)[:200]}"
        raise ImagePullError(
            f"image {reference} has a config or manifest the agent cannot read ({problem})"
        ) from None


def _strings(config: dict[str, Any], key: str) -> tuple[str, ...]:
    """A list-of-strings field of an image config (() when absent or null)."""
    value = config.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TypeError(f"{key} is not a list of strings")
    return tuple(value)


def _string(config: dict[str, Any], key: str) -> str:
    """A string field of an image config ("" when absent or null)."""
    value = config.get(key) or ""
    if not isinstance(value, str):
        raise TypeError(f"{key} is not a string")
    return value


def _stop_signal(reference: str, value: str) -> str:
    """The image's StopSignal as the spec's stop_signal is normalised ("" when unset);
    one that is not a signal is dropped with a warning, leaving SIGTERM: passed on, the
    runtime's kill would refuse it and no cancel, deadline or eviction could stop the
    container politely."""
    if not value:
        return ""
    name = signal_name(value)
    if name is None:
        log.warning(
            "image %s: its StopSignal %r is not a signal; its containers get SIGTERM",
            reference,
            value[:100],
        )
        return ""
    return name


def _source_of(reference: str) -> str:
    return reference if reference.startswith("oci:") else f"docker://{reference}"


def _registry_of(source: str) -> str:
    """The registry host of a docker:// source ("" for other transports)."""
    if not source.startswith("docker://"):
        return ""
    return source.removeprefix("docker://").split("/", 1)[0]


def _tag_of(reference: str) -> str:
    """The layout tag of a reference: the reference itself, without the oci: prefix's slash."""
    return reference.replace("oci:/", "oci/", 1)
