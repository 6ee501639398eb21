"""Errors of the runtime layer, one per phase, so the executor can name the failure."""

from __future__ import annotations


class RuntimeLayerError(Exception):
    """Base of the runtime layer's errors."""


class ImagePullError(RuntimeLayerError):
    """The image could not be pulled, found or unpacked."""


class ContainerCreateError(RuntimeLayerError):
    """The bundle or the container could not be created."""


class ContainerStartError(RuntimeLayerError):
    """The container was created but its process could not be started."""


class MonitorLost(RuntimeLayerError):
    """The container's conmon exited without recording its exit: the exit code is lost."""


class CommandError(RuntimeLayerError):
    """A helper command (skopeo, umoci, the OCI runtime) failed."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        detail = stderr.strip() or f"exit status {returncode}"
        super().__init__(f"{argv[0]} {argv[1] if len(argv) > 1 else ''}: {detail}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
