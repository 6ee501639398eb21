"""An image's config as the store reads it: a StopSignal normalised as the spec's
stop_signal is (one that is not a signal leaves SIGTERM, with a warning), and a manifest or
config the agent cannot read (too deep for Python's parser, ill-typed) an ImagePullError
naming the image, never an agent error."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from agent.domain import PullPolicy
from agent.runtime.errors import ImagePullError
from agent.runtime.images import ImageStore, normalize_reference
from agent.runtime.staging import REF_NAME

NAME = "127.0.0.1:5000/app:1"


def put(layout: Path, data: bytes) -> str:
    """Writes a blob into the layout; returns its digest."""
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def stored(root: Path, config: bytes, manifest: dict[str, Any] | None = None) -> ImageStore:
    """A store holding NAME, unpacked, whose config blob is `config` (and whose manifest
    is `manifest`, else one pointing at that config)."""
    layout = root / "oci"
    config_digest = put(layout, config)
    manifest = manifest or {"schemaVersion": 2, "config": {"digest": config_digest}}
    digest = put(layout, json.dumps(manifest).encode())
    tag = normalize_reference(NAME)
    entry = {"digest": digest, "annotations": {REF_NAME: tag}}
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (root / "rootfs" / digest.replace(":", "-") / "rootfs").mkdir(parents=True)
    return ImageStore(root)


def with_config(**fields: Any) -> bytes:
    return json.dumps({"architecture": "amd64", "config": fields}).encode()


@pytest.mark.parametrize(
    ("given", "stop_signal"),
    [("SIGINT", "SIGINT"), ("quit", "SIGQUIT"), ("9", "SIGKILL"), ("", "")],
)
async def test_an_images_stop_signal_is_normalised_as_the_specs(
    tmp_path: Path, given: str, stop_signal: str
) -> None:
    store = stored(tmp_path, with_config(StopSignal=given))
    image = await store.ensure(NAME, PullPolicy.NEVER)
    assert image.config.stop_signal == stop_signal


async def test_an_images_stop_signal_that_is_not_a_signal_leaves_sigterm(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hostile image names StopSignal SIGBOGUS: passed on, the runtime's kill refused
    it and no cancel, deadline or eviction could stop the container. It is dropped (the
    container gets SIGTERM) and the warning names the image."""
    store = stored(tmp_path, with_config(StopSignal="SIGBOGUS", Cmd=["/x"]))
    with caplog.at_level(logging.WARNING, logger="agent.runtime.images"):
        image = await store.ensure(NAME, PullPolicy.NEVER)
    assert image.config.stop_signal == "" and image.config.cmd == ("/x",)
    assert f"image {normalize_reference(NAME)}: its StopSignal 'SIGBOGUS'" in caplog.text


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        # Go's JSON (skopeo, umoci) takes 5,000 levels in a field it ignores; Python's not.
        (b'{"config": {}, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", "RecursionError"),
        (b'{"config": {"Cmd": ["/x"]', "JSONDecodeError"),
        (b"\xff\xfe", "UnicodeDecodeError"),
        (b"[]", "AttributeError"),
        (with_config(Entrypoint="/bin/sh"), "Entrypoint is not a list of strings"),
        (with_config(Env=["A=1", 2]), "Env is not a list of strings"),
        (with_config(User=1000), "User is not a string"),
        (json.dumps({"config": ["Cmd"]}).encode(), "AttributeError"),
    ],
)
async def test_a_config_the_agent_cannot_read_is_an_image_pull_error(
    tmp_path: Path, config: bytes, problem: str
) -> None:
    store = stored(tmp_path, config)
    with pytest.raises(ImagePullError) as raised:
        await store.ensure(NAME, PullPolicy.NEVER)
    message = str(raised.value)
    assert message.startswith(f"image {normalize_reference(NAME)} has a config or manifest")
    assert problem in message


async def test_a_manifest_without_a_config_is_an_image_pull_error(tmp_path: Path) -> None:
    store = stored(tmp_path, with_config(), manifest={"schemaVersion": 2, "layers": []})
    with pytest.raises(ImagePullError, match="KeyError: 'config'"):
        await store.ensure(NAME, PullPolicy.NEVER)
