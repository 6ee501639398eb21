"""Real parts for end-to-end tests: the example image, a loopback registry, agent processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobagent_client import JobAgentClient

from agent.config import AgentConfig
from agent.runtime.manager import STOP_SIGNAL_ANNOTATION, RuntimePaths

REPO = Path(__file__).resolve().parents[2]
REQUIRED_BINARIES = ("conmon", "skopeo", "umoci", "docker-registry", "youki", "runc", "busybox")
DEFAULT_LISTEN = AgentConfig().listen[0]


@contextmanager
def host_user(prefix: str) -> Iterator[str]:
    """A new unprivileged host user (with its own group and home), removed afterwards."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    command = ["useradd", "--create-home", "--user-group", name]
    subprocess.run(command, check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", "-r", name], check=False, capture_output=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: object, timeout: float, what: str) -> None:
    """Polls `condition()` until it is true; fails the test with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def build_example_image(target: Path) -> Path:
    """Builds the busybox-static OCI layout with the project's own script."""
    subprocess.run(
        ["bash", str(REPO / "examples" / "build-busybox-image.sh"), str(target)],
        check=True,
        capture_output=True,
    )
    return target


def configured_image(example_image: Path, target: Path, *options: str) -> Path:
    """A copy of the example image at `target` with `umoci config` options applied
    (--config.stopsignal=SIGBOGUS, say)."""
    shutil.copytree(example_image, target)
    argv = ["umoci", "config", "--image", f"{target}:latest", "--tag", "latest", *options]
    subprocess.run(argv, check=True, capture_output=True)
    return target


def set_stop_signal(agent: AgentProcess, container_id: str, stop_signal: str) -> None:
    """Writes `stop_signal` into a running container's bundle unchecked, as an agent that
    copied an image's StopSignal as it was left it (the container is adopted as is)."""
    config_file = agent.paths.bundles / container_id / "config.json"
    config = json.loads(config_file.read_text())
    config["annotations"][STOP_SIGNAL_ANNOTATION] = stop_signal
    config_file.write_text(json.dumps(config))


@dataclass
class Registry:
    """Debian's docker-registry serving plain HTTP on 127.0.0.1."""

    root: Path
    # user:password that the registry demands (htpasswd), or None for an open registry.
    credentials: str | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """host:port of the registry."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the registry and waits until it answers."""
        config = self.root / "config.yml"
        auth = ""
        if self.credentials is not None:
            user, _, password = self.credentials.partition(":")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt

                hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
            (self.root / "htpasswd").write_text(f"{user}:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {self.root / 'htpasswd'}\n"
        config.write_text(
            "version: 0.1\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            f"http:\n  addr: {self.host}\n"
            "log:\n  level: error\n" + auth
        )
        self.process = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 20, "the registry to answer")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1) as response:
                return bool(response.status == 200)
        except urllib.error.HTTPError as error:
            return error.code == 401
        except OSError:
            return False

    def push(self, layout: Path, name: str) -> str:
        """Pushes an OCI layout's `latest` as `name`; returns the pull reference."""
        reference = f"{self.host}/{name}"
        creds = [f"--dest-creds={self.credentials}"] if self.credentials else []
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                *creds,
                f"oci:{layout}:latest",
                f"docker://{reference}",
            ],
            check=True,
            capture_output=True,
        )
        return reference

    def stop(self) -> None:
        """Stops the registry."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class AgentProcess:
    """The real agent, as a child process serving on a loopback port."""

    data_dir: Path
    runtime: str
    registry: str = ""
    cwd: Path = REPO
    extra_args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # Where the agent listens instead of 127.0.0.1:port (a unix:/PATH socket, say); with
    # DEFAULT_LISTEN the agent is given no --listen at all.
    listen: str = ""
    # TLS for the health check and clients, when the agent serves TLS.
    credentials: grpc.ChannelCredentials | None = None
    # The umask the agent's processes start with (-1: this process's).
    umask: int = -1

    @property
    def log_file(self) -> Path:
        """The agent's own output."""
        return self.cwd / self.data_dir / "agent.log"

    @property
    def paths(self) -> RuntimePaths:
        """Where the agent keeps bundles, runtime state and writable layers."""
        return RuntimePaths.under(self.cwd / self.data_dir, Path(self.runtime).name)

    @property
    def target(self) -> str:
        """The agent's address."""
        return self.listen or f"127.0.0.1:{self.port}"

    def python(self, *args: str) -> list[str]:
        """argv of `python -m agent ARGS`."""
        return [sys.executable, "-m", "agent", *args]

    def registry_flags(self) -> list[str]:
        """--insecure-registry for the loopback registry, when there is one."""
        return ["--insecure-registry", self.registry] if self.registry else []

    def import_image(self, source: str, name: str) -> None:
        """Preloads an image into the agent's store."""
        subprocess.run(
            self.python(
                "image-import",
                "--data-dir",
                str(self.data_dir),
                *self.registry_flags(),
                source,
                name,
            ),
            check=True,
            capture_output=True,
            cwd=self.cwd,
            umask=self.umask,
        )

    def access_flags(self) -> list[str]:
        """--listen, and --insecure when the agent serves TCP without tokens or client
        certificates, so that tests call it without a token as before TCP needed them."""
        authenticated = {"--tokens-file", "--tls-client-ca", "--insecure"} & {
            argument.partition("=")[0] for argument in self.extra_args
        }
        on_tcp = not self.target.startswith("unix:")
        insecure = ["--insecure"] if on_tcp and not authenticated else []
        return insecure + ([] if self.target == DEFAULT_LISTEN else ["--listen", self.target])

    def start(self) -> None:
        """Starts the agent and waits until it says it serves and its health service
        answers SERVING."""
        since = self.log_file.stat().st_size if self.log_file.exists() else 0
        log = self.log_file.open("ab")
        self.process = subprocess.Popen(
            self.python(
                "serve",
                "--data-dir",
                str(self.data_dir),
                *self.access_flags(),
                "--runtime",
                self.runtime,
                *self.registry_flags(),
                "--stop-grace",
                "5",
                "--drain",
                "0s",
                *self.extra_args,
            ),
            stdout=log,
            stderr=log,
            cwd=self.cwd,
            umask=self.umask,
        )
        try:
            wait_until(
                lambda: self.serving() and self.announced(since), 30, f"the agent on {self.target}"
            )
        except AssertionError:
            # Not left running: the caller has no started agent to stop.
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait(10)
            raise

    def announced(self, since: int) -> bool:
        """True once the agent logged, past byte `since` of its log, that it serves: a
        health answer alone may come from another process that took the port first."""
        with self.log_file.open("rb") as log:
            log.seek(since)
            return b"serving on " in log.read()

    def serving(self) -> bool:
        """True when the agent's health check answers SERVING."""
        assert self.process is not None
        if self.process.poll() is not None:
            log = self.log_file.read_text()
            raise AssertionError(f"the agent exited: {log[-2000:]}")
        channel = (
            grpc.insecure_channel(self.target)
            if self.credentials is None
            else grpc.secure_channel(self.target, self.credentials)
        )
        with channel:
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1
                )
            except grpc.RpcError:
                return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)

    def client(self, token: str | None = None) -> JobAgentClient:
        """A client connected to this agent (with a bearer token, if given)."""
        return JobAgentClient.connect(self.target, credentials=self.credentials, token=token)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stops the agent with `signum` and waits for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(30)
        self.process = None


def sweep(agent: AgentProcess) -> None:
    """Ends whatever a stopped agent or a failed test left running under the agent's data
    directory or its volatile directory, and removes the volatile directory."""
    places = [str((agent.cwd / agent.data_dir).resolve()), str(agent.paths.volatile)]
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if entry.name.isdigit() and any(place.encode() in cmdline for place in places):
                os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue
    for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
        target = line.split()[1]
        if target.startswith(tuple(places)):
            subprocess.run(["umount", "-l", target], check=False)
    shutil.rmtree(agent.paths.volatile, ignore_errors=True)


def settled_leftovers(agent: AgentProcess, container_id: str, timeout: float = 10) -> list[str]:
    """What is left of a container once the agent had time to remove it: the outcome is
    recorded first, the container removed right after."""
    deadline = time.monotonic() + timeout
    while (found := leftovers(agent, container_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def leftovers(agent: AgentProcess, container_id: str) -> list[str]:
    """What is left of a container: processes, mounts, runtime state, bundle."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if container_id.encode() in cmdline:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"process {entry.name}: {command}")
    if container_id in Path("/proc/self/mounts").read_text():
        found.append("a mount")
    # Each hierarchy (v1 controllers, unified) by name: a recursive glob would race with
    # other containers' cgroups going away.
    root = Path("/sys/fs/cgroup")
    for hierarchy in (root, *(entry for entry in root.iterdir() if entry.is_dir())):
        if (hierarchy / "jobagent" / container_id).exists():
            found.append(f"cgroup {hierarchy / 'jobagent' / container_id}")
    paths = agent.paths
    if (paths.bundles / container_id).exists():
        found.append("the bundle directory")
    if (paths.writable / container_id).exists():
        found.append("the writable layer")
    runtime = shutil.which(agent.runtime)
    state_root = paths.runtime_state
    if runtime is not None:
        state = subprocess.run(
            [runtime, "--root", str(state_root), "state", container_id], capture_output=True
        )
        if state.returncode == 0:
            found.append("runtime state")
    elif (state_root / container_id).exists():
        found.append("runtime state")
    return found
