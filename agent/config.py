"""The agent's configuration: embedded defaults, overridden by command-line flags."""

from __future__ import annotations

import grp
import ipaddress
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from agent.api.limits import ApiLimits
from agent.domain import ID_RANGE_SIZE, HostPolicy, IdRangePool
from agent.errors import InvalidSpec
from agent.executor.retention import RetentionPolicy
from agent.runtime.limits import JobLimits

KNOWN_RUNTIMES = ("youki", "runc", "crun")
UNIX_PREFIX = "unix:"
DEFAULT_SOCKET = Path("/run/jobagent/jobagent.sock")
# sockaddr_un's sun_path holds 108 bytes, the last one a NUL.
MAX_SOCKET_PATH_BYTES = 107
# A request cap below this would refuse ordinary calls (a trigger with its payload).
MIN_REQUEST_BYTES = 64 * 1024


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key (PEM), and the CA that client certificates must
    chain to (mTLS) when set."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials; raises InvalidSpec when a file cannot be read."""
        try:
            pair = (self.key.read_bytes(), self.cert.read_bytes())
            ca = None if self.client_ca is None else self.client_ca.read_bytes()
        except OSError as error:
            raise InvalidSpec("tls", f"cannot read {error.filename}: {error.strerror}") from None
        return grpc.ssl_server_credentials(
            [pair], root_certificates=ca, require_client_auth=ca is not None
        )


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to start."""

    data_dir: Path = Path("/var/lib/jobagent")
    # host:port (TCP) or unix:PATH addresses; one agent may listen on several.
    listen: tuple[str, ...] = (f"{UNIX_PREFIX}{DEFAULT_SOCKET}",)
    socket_mode: int = 0o660
    # The group of unix sockets and their directory (empty: the agent's own group).
    socket_group: str = ""
    tls: TlsFiles | None = None
    tokens_file: Path | None = None
    # Whether viewer tokens see env values (names only by default).
    show_env_to_viewers: bool = False
    # host:port of the Prometheus /metrics endpoint (off when empty).
    metrics_listen: str = ""
    runtime: str = "youki"
    conmon: str = "conmon"
    stop_grace_seconds: float = 10.0
    # On SIGTERM: NOT_SERVING and no new triggers this long before the server stops.
    drain_seconds: float = 1.0
    insecure: bool = False
    insecure_registries: frozenset[str] = frozenset()
    registry_auth_file: Path | None = None
    pull_timeout_seconds: float = 300.0
    # The seed's JobExecutorConfig: 10 executions at once, 1 MiB of output kept per attempt,
    # finished executions kept for an hour (RetentionPolicy).
    max_concurrent: int = 10
    # Executions waiting in Pending, node-wide and per job: a trigger past either is
    # RESOURCE_EXHAUSTED (and a cron run is skipped) rather than queued without end.
    max_pending: int = 1000
    max_pending_per_job: int = 100
    # Open server streams (node-wide and per caller) and the largest request message.
    api_limits: ApiLimits = field(default_factory=ApiLimits)
    # Nice levels the agent's own threads run above the processes it starts (agent.priority).
    priority_boost: int = 10
    max_log_bytes: int = 1024**2
    # Triggers are refused while the data directory's filesystem has less free space.
    min_free_bytes: int = 64 * 1024**2
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    host_policy: HostPolicy = field(default_factory=HostPolicy)
    # Per-job defaults (pids, /tmp size) and the parent of the jobs' cgroups.
    limits: JobLimits = field(default_factory=JobLimits)
    # The host ids that jobs' user namespaces map to.
    id_ranges: IdRangePool = field(default_factory=IdRangePool)

    @property
    def database(self) -> Path:
        """The SQLite file."""
        return self.data_dir / "agent.db"

    @property
    def admin_token_file(self) -> Path:
        """The first admin token, made when no tokens file is configured."""
        return self.data_dir / "admin.token"

    @property
    def log_dir(self) -> Path:
        """Where attempt log files are kept."""
        return self.data_dir / "logs"

    @property
    def runtime_name(self) -> str:
        """youki, runc, crun, or the file name of a runtime given by path."""
        return Path(self.runtime).name

    @property
    def sockets(self) -> tuple[Path, ...]:
        """The unix sockets to serve on."""
        return tuple(
            Path(address.removeprefix(UNIX_PREFIX))
            for address in self.listen
            if address.startswith(UNIX_PREFIX)
        )

    @property
    def tcp_listen(self) -> tuple[str, ...]:
        """The TCP addresses to serve on."""
        return tuple(address for address in self.listen if not address.startswith(UNIX_PREFIX))

    @property
    def tcp_needs_token(self) -> bool:
        """TCP calls need a bearer token when a tokens file is configured; otherwise TCP is
        served only with client certificates (mTLS) or with --insecure."""
        return self.tokens_file is not None

    @property
    def tcp_open(self) -> bool:
        """True when TCP callers would be authenticated by nothing at all (only --insecure
        allows that)."""
        client_ca = self.tls is not None and self.tls.client_ca is not None
        return bool(self.tcp_listen) and not (self.tcp_needs_token or client_ca)

    def socket_gid(self) -> int | None:
        """The group id of `socket_group`, None when unset; raises InvalidSpec when no
        group has that name."""
        if not self.socket_group:
            return None
        try:
            return grp.getgrnam(self.socket_group).gr_gid
        except KeyError:
            raise InvalidSpec("socket_group", f"no group is named {self.socket_group!r}") from None

    def runtime_binary(self) -> str:
        """The absolute path of the OCI runtime; raises InvalidSpec when it is missing."""
        found = shutil.which(self.runtime)
        if found is None:
            raise InvalidSpec("runtime", f"{self.runtime!r} is not an executable on PATH")
        return found

    def check(self) -> None:
        """Raises InvalidSpec naming the first setting that cannot work."""
        for name, value in (
            ("max_concurrent", self.max_concurrent),
            ("max_pending", self.max_pending),
            ("max_pending_per_job", self.max_pending_per_job),
            ("max_streams", self.api_limits.streams),
            ("max_streams_per_caller", self.api_limits.streams_per_caller),
        ):
            if value < 1:
                raise InvalidSpec(name, "must be at least 1")
        if self.api_limits.request_bytes < MIN_REQUEST_BYTES:
            raise InvalidSpec("max_request_size", f"must be at least {MIN_REQUEST_BYTES} bytes")
        if not 0 <= self.priority_boost <= 39:
            raise InvalidSpec("priority_boost", "must be between 0 and 39 (nice levels)")
        if self.retention.per_job < 0:
            raise InvalidSpec("retention_per_job", "must not be negative")
        if self.retention.interval_seconds <= 0:
            raise InvalidSpec("retention_interval", "must be positive")
        self.limits.check()
        self.check_listen()
        check_id_ranges(self.id_ranges)
        self.socket_gid()
        if self.metrics_listen:
            host, _, port = self.metrics_listen.rpartition(":")
            if not host or not port.isdigit():
                raise InvalidSpec("metrics_listen", f"{self.metrics_listen!r} is not host:port")

    def check_listen(self) -> None:
        """Every listener needs a way to authenticate its callers: a unix socket has its
        file mode and the tokens; TCP, loopback included, needs a tokens file or client
        certificates (mTLS), and TLS beyond loopback. --insecure lifts the TCP rules."""
        if not self.listen:
            raise InvalidSpec("listen", "needs at least one address")
        for address in self.listen:
            if address.startswith(UNIX_PREFIX):
                path = address.removeprefix(UNIX_PREFIX)
                if not path.startswith("/"):
                    raise InvalidSpec("listen", f"{address!r}: a socket path must be absolute")
                if len(path.encode()) > MAX_SOCKET_PATH_BYTES:
                    limit = f"a socket path has at most {MAX_SOCKET_PATH_BYTES} bytes"
                    raise InvalidSpec("listen", f"{address!r}: {limit}")
                continue
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise InvalidSpec("listen", f"{address!r} is not host:port or unix:/PATH")
            if self.insecure:
                continue
            if self.tcp_open:
                raise InvalidSpec(
                    "listen",
                    f"{address}: TCP needs authentication, loopback included: give "
                    "--tokens-file (bearer tokens) or --tls-client-ca (client certificates), "
                    "or --insecure to serve it without any",
                )
            if not (self.tls or is_loopback(host)):
                raise InvalidSpec(
                    "listen",
                    f"{host} is not loopback: plain TCP there needs TLS "
                    "(--tls-cert and --tls-key), or --insecure",
                )


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


# The highest host id (2^32 - 2; 2^32 - 1 means "no id").
MAX_HOST_ID = 2**32 - 2


def parse_id_ranges(text: str) -> IdRangePool:
    """START:COUNT, as a line of /etc/subuid without the name; raises InvalidSpec."""
    start, _, count = text.partition(":")
    if not (start.isdigit() and count.isdigit()):
        raise InvalidSpec("userns_range", f"{text!r} is not START:COUNT")
    return IdRangePool(int(start), int(count))


def check_id_ranges(pool: IdRangePool) -> None:
    """The range must hold at least one job's ids, and none of the host's first 65536."""
    if pool.start < ID_RANGE_SIZE:
        reason = f"START must be at least {ID_RANGE_SIZE}, above the host's own users' ids"
        raise InvalidSpec("userns_range", reason)
    if pool.count < ID_RANGE_SIZE:
        raise InvalidSpec("userns_range", f"COUNT must be at least {ID_RANGE_SIZE} (one job)")
    if pool.start + pool.count - 1 > MAX_HOST_ID:
        raise InvalidSpec("userns_range", "the range passes the highest host id")
