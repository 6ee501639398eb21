"""Images from the loopback registry: pull policies, moved tags, digests, failures."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

from jobagent_client import JobAgentClient

from agent.domain import ImageSpec, PullPolicy
from agent.runtime import syscalls
from agent.runtime.bundle import mount_overlay
from agent.runtime.images import ImageStore
from agent.runtime.manager import ContainerManager, RuntimePaths
from tests.e2e.conftest import start_agent
from tests.e2e.harness import AgentProcess, Registry, sweep


def variant(example_image: Path, tmp_path: Path, marker: str) -> Path:
    """A copy of the example image whose config (and so digest) differs by one env var."""
    layout = tmp_path / f"busybox-{marker}"
    shutil.copytree(example_image, layout)
    argv = [
        "umoci",
        "config",
        "--image",
        f"{layout}:latest",
        "--tag",
        "latest",
        "--config.env",
        f"VARIANT={marker}",
    ]
    subprocess.run(argv, check=True, capture_output=True)
    return layout


def run(client: JobAgentClient, name: str, image: str, policy: str) -> tuple[str, list[str]]:
    client.register(
        f"version: v1\ndeployment: images\nservices:\n  {name}:\n    rtype: job\n"
        f"    image: {{name: '{image}', pull_policy: {policy}}}\n"
        "    command: {entrypoint: [/bin/sh, -c, 'echo ${VARIANT:-none}']}\n",
        replace=True,
    )
    execution = client.wait(client.trigger(name).id)
    assert execution.status == "completed", execution.message
    return execution.image, [line.message for line in client.logs(execution.id)]


def test_newer_follows_a_moved_tag_and_if_not_present_does_not(
    client: JobAgentClient,
    agent: AgentProcess,
    registry: Registry,
    example_image: Path,
    tmp_path: Path,
) -> None:
    # Each runtime's agent has its own store, so each gets its own tag to move.
    tag = f"moving-{agent.runtime}"
    registry.push(variant(example_image, tmp_path, "one"), f"busybox:{tag}")
    image = f"{registry.host}/busybox:{tag}"
    first_digest, output = run(client, "newer", image, "newer")
    assert output == ["one"]
    registry.push(variant(example_image, tmp_path, "two"), f"busybox:{tag}")
    assert run(client, "lazy", image, "if_not_present")[1] == ["one"]
    second_digest, output = run(client, "newer", image, "newer")
    assert output == ["two"] and second_digest != first_digest
    assert run(client, "newer", image, "newer")[0] == second_digest


def test_a_digest_pins_the_image(
    client: JobAgentClient, registry: Registry, example_image: Path, tmp_path: Path
) -> None:
    registry.push(variant(example_image, tmp_path, "pinned"), "busybox:pin-source")
    digest = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            f"docker://{registry.host}/busybox:pin-source",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    registry.push(variant(example_image, tmp_path, "later"), "busybox:pin-source")
    image, output = run(client, "pinned", f"{registry.host}/busybox@{digest}", "if_not_present")
    assert output == ["pinned"]
    assert image.startswith(f"{registry.host}/busybox@{digest}@")


def test_never_refuses_an_image_that_is_not_present(
    client: JobAgentClient, registry: Registry
) -> None:
    client.register(
        "version: v1\ndeployment: images\nservices:\n  absent:\n    rtype: job\n"
        f"    image: {{name: '{registry.host}/busybox:never-pushed', pull_policy: never}}\n",
        replace=True,
    )
    execution = client.wait(client.trigger("absent").id)
    assert (execution.status, execution.failure_reason) == ("failed", "image_pull")
    assert "pull_policy is never" in execution.message


def deeply_nested_config(example_image: Path, tmp_path: Path) -> Path:
    """A copy of the example image whose config has an extra field nested 5,000 levels
    deep: Go's JSON (skopeo, umoci) takes it, Python's parser does not."""
    layout = tmp_path / "deep"
    shutil.copytree(example_image, layout)
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].split(":")[1]).read_text())
    config = (blobs / manifest["config"]["digest"].split(":")[1]).read_bytes()
    hostile = config.rstrip()[:-1] + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    manifest["config"]["digest"], manifest["config"]["size"] = put(hostile)
    digest, size = put(json.dumps(manifest).encode())
    index["manifests"][0].update(digest=digest, size=size)
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def test_a_config_too_deep_for_the_agent_fails_the_pull_naming_the_image(
    client: JobAgentClient,
    agent: AgentProcess,
    registry: Registry,
    example_image: Path,
    tmp_path: Path,
) -> None:
    """A hostile image's config nests a field 5,000 levels deep: skopeo and umoci take
    it, and Python's parser raised RecursionError, so every run ended AGENT_ERROR with a
    traceback. Each run, the first (the pull) and the next (the image already in the
    store), now fails IMAGE_PULL naming the image."""
    image = registry.push(deeply_nested_config(example_image, tmp_path), "busybox:deep")
    client.register(
        "version: v1\ndeployment: images\nservices:\n  deep:\n    rtype: job\n"
        f"    image: {{name: '{image}'}}\n    command: {{entrypoint: [/bin/true]}}\n",
        replace=True,
    )
    for _ in range(2):
        execution = client.wait(client.trigger("deep").id)
        assert (execution.status, execution.failure_reason) == ("failed", "image_pull")
        assert execution.message.startswith(
            f"image {image} has a config or manifest the agent cannot read (RecursionError: "
        )
    assert agent.serving()


def test_prune_removes_only_images_no_job_uses(
    tmp_path: Path, registry: Registry, agent: AgentProcess, example_image: Path
) -> None:
    registry.push(variant(example_image, tmp_path, "spare"), "busybox:spare")
    own = start_agent(tmp_path / "agent", agent.runtime, registry)
    try:
        with own.client() as client:
            spare = f"{registry.host}/busybox:spare"
            assert run(client, "spare", spare, "if_not_present")[1] == ["spare"]
            client.register(
                "version: v1\ndeployment: images\nservices:\n  busy:\n    rtype: job\n"
                "    image: {name: busybox:latest}\n    command: {entrypoint: [sleep, '30']}\n",
                replace=True,
            )
            busy = client.trigger("busy")
            client.unregister("spare")
            rootfs_dirs = set((own.data_dir / "images" / "rootfs").iterdir())
            removed, freed = client.prune_images()
            assert removed == [f"{spare}"] and freed > 0
            assert len(set((own.data_dir / "images" / "rootfs").iterdir())) == len(rootfs_dirs) - 1
            assert client.prune_images() == ([], 0)
            client.cancel(busy.id)
    finally:
        own.stop()
        sweep(own)


def test_credentials_come_from_the_auth_file(
    tmp_path: Path, agent: AgentProcess, registry: Registry, example_image: Path
) -> None:
    private = Registry(tmp_path / "private", credentials="puller:s3cret")
    private.root.mkdir()
    private.start()
    try:
        private.push(example_image, "busybox:private")
        auth_file = tmp_path / "auth.json"
        token = base64.b64encode(b"puller:s3cret").decode()
        auth_file.write_text(json.dumps({"auths": {private.host: {"auth": token}}}))
        image = f"{private.host}/busybox:private"
        plain = ("--insecure-registry", private.host)
        without = start_agent(tmp_path / "without", agent.runtime, registry, extra_args=plain)
        try:
            with without.client() as client:
                client.register(
                    "version: v1\ndeployment: images\nservices:\n  locked:\n    rtype: job\n"
                    f"    image: {{name: '{image}'}}\n",
                    replace=True,
                )
                refused = client.wait(client.trigger("locked").id)
                assert (refused.status, refused.failure_reason) == ("failed", "image_pull")
                assert "unauthorized" in refused.message.lower()
        finally:
            without.stop()
        own = start_agent(
            tmp_path / "with",
            agent.runtime,
            registry,
            extra_args=(*plain, "--registry-auth-file", str(auth_file)),
        )
        try:
            with own.client() as client:
                assert run(client, "unlocked", image, "if_not_present")[1] == ["none"]
        finally:
            own.stop()
    finally:
        private.stop()


async def test_an_image_under_an_overlay_outlives_its_reference(
    tmp_path: Path, registry: Registry, agent: AgentProcess
) -> None:
    paths = RuntimePaths(**{field.name: tmp_path / field.name for field in fields(RuntimePaths)})
    images = ImageStore(paths.images, insecure_registries=frozenset({registry.host}))
    manager = ContainerManager(paths, shutil.which(agent.runtime) or agent.runtime, images=images)
    try:
        image = await manager.pull(
            ImageSpec(f"{registry.host}/busybox:latest", PullPolicy.IF_NOT_PRESENT)
        )
        rootfs = paths.bundles / "holder" / "rootfs"
        layer = paths.writable / "holder"
        mount_overlay(image.rootfs, layer / "upper", layer / "work", rootfs)
        try:
            assert (await manager.prune_images(set(), None)).removed == (image.reference,)
            assert (image.rootfs / "bin").is_dir() and (rootfs / "bin").is_dir()
        finally:
            syscalls.unmount(rootfs)
        # The store is empty now, and pulls again.
        again = await manager.pull(
            ImageSpec(f"{registry.host}/busybox:latest", PullPolicy.IF_NOT_PRESENT)
        )
        assert again.digest == image.digest and (again.rootfs / "bin").is_dir()
    finally:
        manager.close()
