"""A pull's private OCI layout, so that the network part of a pull holds no store-wide lock.

skopeo copies an image into a staging layout of its own. Its blobs directory starts with
hard links to every blob the store has, so skopeo downloads only the blobs the store
lacks. Once the copy is complete the result enters the store in one short step under the
store's lock: the new blobs are linked into the store's blobs directory and the manifest
is recorded in the store's index.json (a JSON edit, as skopeo's own OCI destination makes).
umoci then unpacks from the staging layout, which nothing else touches.

Prune collects the store's layout only, under the store's lock: a blob of a pull in
flight is in its staging layout (a hard link keeps it even when prune removes the store's
name for it) and reaches the store only together with the index entry that references it.
Each staging directory is flocked by its creator for its life; one whose lock is free was
left by a process that died, and is removed by the next store to open.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from agent.hostfs import PRIVATE_FILE, make_dir, write_file
from agent.runtime.errors import ImagePullError

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_FILE = b'{"imageLayoutVersion": "1.0.0"}'
HEX = re.compile(r"[0-9a-f]+")
# Blobs below this size (manifests, configs, indexes) are copied into a staging layout
# rather than linked: skopeo rewrites a manifest blob it copies again in place (truncating
# the file, then writing it), and through a hard link a reader of the store's layout would
# see it empty meanwhile.
COPIED_BLOB_SIZE = 64 * 1024
EMPTY_INDEX: dict[str, Any] = {"schemaVersion": 2, "manifests": []}


class StagingLayout:
    """A private OCI layout in `path`/layout, held (flocked) until remove()."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.layout = path / "layout"
        self._fd = fd

    @classmethod
    def create(cls, parent: Path, store_layout: Path) -> StagingLayout:
        """A new staging layout whose blobs start as links to the store's."""
        make_dir(parent)
        path = Path(tempfile.mkdtemp(dir=parent, prefix="pull-"))
        fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_FILE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        staging = cls(path, fd)
        try:
            link_blobs(
                store_layout / "blobs", staging.layout / "blobs", copy_below=COPIED_BLOB_SIZE
            )
        except BaseException:
            staging.remove()
            raise
        return staging

    @staticmethod
    def sweep(parent: Path) -> None:
        """Removes the staging directories that no live process holds."""
        if not parent.is_dir():
            return
        for path in parent.iterdir():
            try:
                fd = os.open(path / "lock", os.O_RDWR | os.O_NOFOLLOW)
            except OSError:
                shutil.rmtree(path, ignore_errors=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a pull in flight
            finally:
                os.close(fd)
            shutil.rmtree(path, ignore_errors=True)

    def entry(self, tag: str) -> dict[str, Any]:
        """The index entry of `tag` in this layout; ImagePullError when the copy left none."""
        for manifest in read_index(self.layout)["manifests"] or []:
            if manifest.get("annotations", {}).get(REF_NAME) == tag:
                return dict(manifest)
        raise ImagePullError(f"the pull left no image tagged {tag} in its layout")

    def adopt(self, entry: dict[str, Any]) -> None:
        """Makes this layout's index hold `entry` (for unpacking an image of the store)."""
        make_dir(self.layout)
        write_file(self.layout / "oci-layout", LAYOUT_FILE)
        write_index(self.layout, {**EMPTY_INDEX, "manifests": [entry]})

    def commit(self, store_layout: Path, tag: str) -> str:
        """Links the new blobs into the store and records `tag` in the store's index (the
        caller holds the store's lock); returns the manifest digest."""
        entry = self.entry(tag)
        link_blobs(self.layout / "blobs", store_layout / "blobs")
        if not (store_layout / "oci-layout").exists():
            write_file(store_layout / "oci-layout", LAYOUT_FILE)
        index = read_index(store_layout)
        manifests = index.get("manifests") or []
        others = [m for m in manifests if m.get("annotations", {}).get(REF_NAME) != tag]
        write_index(store_layout, {**index, "manifests": [*others, entry]})
        return str(entry["digest"])

    def blob(self, digest: str) -> Any:
        """A JSON blob (a manifest, a config) of this layout."""
        algorithm, _, hex_digest = digest.partition(":")
        return json.loads((self.layout / "blobs" / algorithm / hex_digest).read_text())

    def remove(self) -> None:
        """Removes the layout and lets go of its lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def link_blobs(source: Path, target: Path, copy_below: int = 0) -> None:
    """Hard-links every blob of `source` (blobs/ALGORITHM/HEX) that `target` lacks (copies
    it when smaller than `copy_below` bytes); a blob removed meanwhile is skipped (the pull
    downloads it again), and so are the temporary files of a copy (not named by a hex
    digest)."""
    if not source.is_dir():
        return
    for algorithm in source.iterdir():
        directory = make_dir(target / algorithm.name)
        for blob in algorithm.iterdir():
            if not HEX.fullmatch(blob.name):
                continue
            with contextlib.suppress(FileExistsError, FileNotFoundError):
                if copy_below and blob.stat().st_size < copy_below:
                    with blob.open("rb") as source_file, (directory / blob.name).open("xb") as copy:
                        shutil.copyfileobj(source_file, copy)
                else:
                    os.link(blob, directory / blob.name)


def read_index(layout: Path) -> dict[str, Any]:
    """A layout's index.json (an empty one before the first image)."""
    try:
        data: dict[str, Any] = json.loads((layout / "index.json").read_text())
    except FileNotFoundError:
        return dict(EMPTY_INDEX)
    return data


def write_index(layout: Path, index: dict[str, Any]) -> None:
    """Replaces a layout's index.json in one rename."""
    temporary = layout / "index.json.tmp"
    write_file(temporary, json.dumps(index).encode())
    temporary.replace(layout / "index.json")
