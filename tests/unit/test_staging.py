"""Staging layouts and keyed locks: what lets pulls of different images run side by side."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from agent.runtime.errors import ImagePullError
from agent.runtime.staging import COPIED_BLOB_SIZE, REF_NAME, StagingLayout, read_index
from agent.runtime.storelock import KeyedLocks


def put_blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def tag(layout: Path, name: str, digest: str) -> None:
    """Records `name` in a layout's index, as skopeo does."""
    entry = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest,
        "size": 2,
        "annotations": {REF_NAME: name},
    }
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))


def test_a_staging_layout_reuses_the_stores_blobs_and_commits_into_its_index(
    tmp_path: Path,
) -> None:
    store = tmp_path / "oci"
    old = put_blob(store, b"old layer")
    tag(store, "example/app:1", put_blob(store, b"{}"))
    staging = StagingLayout.create(tmp_path / "staging", store)
    try:
        # The store's blobs are there already: a copy would not download them again.
        assert (staging.layout / "blobs" / "sha256" / old.split(":")[1]).exists()
        new = put_blob(staging.layout, b"new manifest")
        (staging.layout / "blobs" / "sha256" / "oci-put-blob123").write_bytes(b"partial")
        tag(staging.layout, "example/app:2", new)
        assert staging.commit(store, "example/app:2") == new
        names = [m["annotations"][REF_NAME] for m in read_index(store)["manifests"]]
        assert names == ["example/app:1", "example/app:2"]
        assert (store / "blobs" / "sha256" / new.split(":")[1]).read_bytes() == b"new manifest"
        assert not (store / "blobs" / "sha256" / "oci-put-blob123").exists()
        # A tag committed again replaces its entry.
        tag(staging.layout, "example/app:1", new)
        staging.commit(store, "example/app:1")
        entries = read_index(store)["manifests"]
        assert [m["digest"] for m in entries] == [new, new] and len(entries) == 2
        with pytest.raises(ImagePullError, match="no image tagged"):
            staging.commit(store, "example/app:3")
    finally:
        staging.remove()
    assert not staging.path.exists()


def test_a_manifest_rewritten_in_place_by_a_pull_leaves_the_stores_intact(
    tmp_path: Path,
) -> None:
    """Found by the soak: skopeo, copying an image again (pull_policy: always), rewrites
    the manifest blob in place; through a hard link the store's manifest was empty for a
    moment, and a job starting from the store then failed (AGENT_ERROR, "Expecting
    value"). Small blobs are copied into the staging layout; layers are still linked."""
    store = tmp_path / "oci"
    manifest = put_blob(store, b'{"layers": []}')
    layer = put_blob(store, b"x" * (COPIED_BLOB_SIZE + 1))
    staging = StagingLayout.create(tmp_path / "staging", store)
    try:
        blobs = staging.layout / "blobs" / "sha256"
        name = manifest.split(":")[1]
        with (blobs / name).open("r+b") as rewritten:
            rewritten.truncate(0)
            assert (store / "blobs" / "sha256" / name).read_bytes() == b'{"layers": []}'
        layer_name = layer.split(":")[1]
        assert (blobs / layer_name).stat().st_ino == (
            store / "blobs" / "sha256" / layer_name
        ).stat().st_ino
    finally:
        staging.remove()


def test_a_prune_meanwhile_cannot_take_a_pulls_blobs(tmp_path: Path) -> None:
    store = tmp_path / "oci"
    layer = put_blob(store, b"shared layer")
    staging = StagingLayout.create(tmp_path / "staging", store)
    try:
        # A prune removes the only image that used the layer (as `umoci gc` would).
        shutil.rmtree(store / "blobs")
        manifest = put_blob(staging.layout, b"manifest using the layer")
        tag(staging.layout, "example/app:1", manifest)
        staging.commit(store, "example/app:1")
        assert (store / "blobs" / "sha256" / layer.split(":")[1]).read_bytes() == b"shared layer"
    finally:
        staging.remove()


def test_a_sweep_removes_only_staging_layouts_no_process_holds(tmp_path: Path) -> None:
    parent = tmp_path / "staging"
    held = StagingLayout.create(parent, tmp_path / "oci")  # flocked while it lives
    left = parent / "pull-left"  # made by a process that died: its lock file is free
    (left / "layout").mkdir(parents=True)
    (left / "lock").write_bytes(b"")
    try:
        StagingLayout.sweep(parent)
        assert not left.exists() and held.layout.parent.exists()
    finally:
        held.remove()


async def test_keyed_locks_hold_one_key_without_holding_the_others(tmp_path: Path) -> None:
    locks = KeyedLocks(tmp_path / "locks", "reference")
    order: list[str] = []
    async with locks.hold("slow.example/app:1"):
        # Another key is free at once; the same key waits.
        async with asyncio.timeout(10), locks.hold("other.example/app:1"):
            order.append("other")

        async def same() -> None:
            async with locks.hold("slow.example/app:1"):
                order.append("same")

        waiter = asyncio.create_task(same())
        await asyncio.sleep(0.05)
        assert order == ["other"]
    await asyncio.wait_for(waiter, 10)
    assert order == ["other", "same"]
    assert not locks._locks  # nothing kept once nobody holds or waits
