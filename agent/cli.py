"""The `jobagent` command: `serve` runs the agent, `image-import` preloads an image."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent import logsetup
from agent.app import serve
from agent.errors import InvalidSpec
from agent.exclusive import AlreadyServing
from agent.runtime.errors import RuntimeLayerError
from agent.runtime.images import ImageStore
from agent.runtime.manager import RuntimePaths
from agent.settings import DEFAULTS, config_from_args, load_config_file
from agent.spec import parse_duration


def build_parser(serve_defaults: Mapping[str, Any] | None = None) -> argparse.ArgumentParser:
    """The command-line interface; `serve_defaults` (from a config file) replace the
    embedded defaults of `serve`, and flags win over both."""
    parser = argparse.ArgumentParser(prog="jobagent", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("serve", help="run the agent")
    run.add_argument("--config", type=Path, help="a YAML file of settings (flag names with _)")
    run.add_argument("--data-dir", type=Path, default=DEFAULTS.data_dir)
    run.add_argument(
        "--listen",
        action="append",
        metavar="ADDRESS",
        help=f"host:port or unix:/PATH, repeatable ({DEFAULTS.listen[0]} by default); "
        "TCP needs --tokens-file or --tls-client-ca",
    )
    run.add_argument(
        "--socket-mode", default="660", help="octal file mode of unix sockets (660 by default)"
    )
    run.add_argument(
        "--socket-group",
        default="",
        metavar="NAME",
        help="group of unix sockets and their directory, whose members may connect "
        "(the agent's own group by default); calls still need a token",
    )
    run.add_argument("--tls-cert", type=Path, help="server certificate (PEM): TCP uses TLS")
    run.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    run.add_argument(
        "--tls-client-ca", type=Path, help="CA (PEM) that client certificates must chain to (mTLS)"
    )
    run.add_argument(
        "--tokens-file",
        type=Path,
        help="bearer tokens with roles (YAML); calls need one (without this file: the admin "
        "token the agent makes in DATA_DIR/admin.token)",
    )
    run.add_argument(
        "--show-env-to-viewers",
        action="store_true",
        help="viewer tokens see env values too (by default their names only)",
    )
    run.add_argument(
        "--log-format",
        choices=logsetup.FORMATS,
        default="text",
        help="the agent's own log: text or JSON lines",
    )
    run.add_argument(
        "--metrics-listen", default="", metavar="HOST:PORT", help="serve Prometheus /metrics"
    )
    run.add_argument("--runtime", default=DEFAULTS.runtime, help="youki, runc, crun or a path")
    run.add_argument("--conmon", default=DEFAULTS.conmon)
    run.add_argument(
        "--stop-grace",
        type=float,
        default=DEFAULTS.stop_grace_seconds,
        help="seconds between the stop signal and SIGKILL",
    )
    run.add_argument(
        "--drain",
        default="1s",
        help="on SIGTERM, how long health says NOT_SERVING before the server stops",
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        help="serve TCP without --tokens-file or --tls-client-ca, or in plain text beyond "
        "loopback (logs a warning at every start)",
    )
    run.add_argument(
        "--max-concurrent",
        type=int,
        default=DEFAULTS.max_concurrent,
        help="executions active at once on this node; more wait in Pending",
    )
    run.add_argument(
        "--max-pending",
        type=int,
        default=DEFAULTS.max_pending,
        help="executions waiting in Pending on this node; a trigger past it is "
        "RESOURCE_EXHAUSTED and a cron run is skipped",
    )
    run.add_argument(
        "--max-pending-per-job",
        type=int,
        default=DEFAULTS.max_pending_per_job,
        help="executions of one job waiting in Pending; past it as --max-pending",
    )
    run.add_argument(
        "--max-streams",
        type=int,
        default=DEFAULTS.api_limits.streams,
        help="server streams (watches, log streams and downloads) open at once on this node",
    )
    run.add_argument(
        "--max-streams-per-caller",
        type=int,
        default=DEFAULTS.api_limits.streams_per_caller,
        help="server streams open at once per caller (token, certificate subject, or all "
        "unauthenticated callers together)",
    )
    run.add_argument(
        "--max-request-size",
        default="1Mi",
        help="largest request message; a bigger one is RESOURCE_EXHAUSTED",
    )
    run.add_argument(
        "--priority-boost",
        type=int,
        default=DEFAULTS.priority_boost,
        help="nice levels the agent's threads run above the containers and runtime calls "
        "it starts (0 keeps them equal)",
    )
    run.add_argument(
        "--max-log-size",
        default="1Mi",
        help="newest bytes of output kept per attempt, unless a job says otherwise",
    )
    run.add_argument(
        "--min-free-space",
        default="64Mi",
        help="triggers are refused (RESOURCE_EXHAUSTED) while the data directory's "
        "filesystem has less free space than this",
    )
    run.add_argument(
        "--retention-max-age",
        default="1h",
        help="finished executions older than this are removed (e.g. 7d, 12h)",
    )
    run.add_argument(
        "--retention-per-job",
        type=int,
        default=100,
        help="finished executions kept per job, newest first",
    )
    run.add_argument("--retention-interval", default="60s", help="how often retention runs")
    run.add_argument("--image-budget", help="unused images go, oldest use first, past this size")
    run.add_argument(
        "--bind-allow",
        action="append",
        default=[],
        metavar="PATH",
        help="a host path under which jobs may bind-mount (repeatable)",
    )
    run.add_argument(
        "--allow-privileged", action="store_true", help="let jobs with privileged: true run"
    )
    run.add_argument(
        "--allow-capability",
        action="append",
        default=[],
        metavar="CAP",
        help="a capability jobs may add, NET_ADMIN say (repeatable)",
    )
    run.add_argument(
        "--allow-host-userns",
        action="store_true",
        help="let jobs with user_namespace: host run in the host's user namespace",
    )
    run.add_argument(
        "--userns-range",
        default=f"{DEFAULTS.id_ranges.start}:{DEFAULTS.id_ranges.count}",
        metavar="START:COUNT",
        help="the host ids given to jobs' user namespaces, 65536 per registered job",
    )
    run.add_argument(
        "--allow-host-network",
        action="store_true",
        help="let jobs with host_network: true share the host's network",
    )
    run.add_argument(
        "--default-pids-limit",
        type=int,
        default=DEFAULTS.limits.pids_limit,
        help="processes a job may have when its spec sets no pids_limit (0: no limit)",
    )
    run.add_argument(
        "--default-tmp-size",
        default="64Mi",
        help="size of the tmpfs on each job's /tmp, unless it mounts its own (0: no size)",
    )
    run.add_argument(
        "--cgroup-parent",
        default=DEFAULTS.limits.cgroup_parent,
        metavar="PATH",
        help="the cgroup (below the root) under which each job's cgroup is made; set "
        "node-wide ceilings on it",
    )
    _registry_flag(run)
    run.set_defaults(**(serve_defaults or {}))

    load = commands.add_parser("image-import", help="copy an image into the agent's store")
    load.add_argument("--data-dir", type=Path, default=DEFAULTS.data_dir)
    load.add_argument("source", help="a skopeo source: oci:PATH:TAG, docker://REF, ...")
    load.add_argument("name", help="the name jobs use for it, e.g. busybox:latest")
    _registry_flag(load)
    return parser


def _registry_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure-registry",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a registry reached over plain HTTP (repeatable)",
    )
    parser.add_argument(
        "--registry-auth-file",
        type=Path,
        help="registry credentials, in the containers auth.json format",
    )
    parser.add_argument("--pull-timeout", default="5m", help="longest time one pull may take")


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve" and args.config is not None:
            defaults = load_config_file(args.config, set(vars(args)) - {"command", "config"})
            args = build_parser(defaults).parse_args(argv)
        logsetup.configure(getattr(args, "log_format", "text"))
        if args.command == "serve":
            asyncio.run(serve(config_from_args(args)))
        else:
            store = ImageStore(
                RuntimePaths.under(args.data_dir, "").images,
                pull_timeout=parse_duration(args.pull_timeout, "pull_timeout"),
                insecure_registries=frozenset(args.insecure_registry),
                auth_file=args.registry_auth_file,
            )
            image = asyncio.run(store.import_image(args.source, args.name))
            print(f"{image.reference} {image.digest}")
    except (InvalidSpec, RuntimeLayerError, AlreadyServing) as error:
        print(f"jobagent: {error}", file=sys.stderr)
        return 2
    return 0
