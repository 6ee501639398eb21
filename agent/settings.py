"""Settings: the `serve` flags and a YAML config file, turned into an AgentConfig.

A config file holds the flags' names with underscores (`max_concurrent: 32`,
`listen: [unix:/run/jobagent/jobagent.sock]`); flags given on the command line win.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from agent.api.limits import ApiLimits
from agent.config import AgentConfig, TlsFiles, parse_id_ranges
from agent.domain import HostPolicy
from agent.errors import InvalidSpec
from agent.executor.retention import RetentionPolicy
from agent.privileges import normalize_capability
from agent.runtime.limits import JobLimits
from agent.spec import MIN_LOG_BYTES, parse_duration, parse_memory

DEFAULTS = AgentConfig()


def load_config_file(path: Path, known: set[str]) -> dict[str, Any]:
    """The settings of a config file, as argparse defaults; InvalidSpec names a bad key."""
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise InvalidSpec("config", f"cannot read {path}: {error}") from None
    if not isinstance(document, dict):
        raise InvalidSpec("config", f"{path} must hold a mapping of settings")
    settings: dict[str, Any] = {}
    for key, value in document.items():
        if key not in known:
            raise InvalidSpec(f"config.{key}", f"is not a setting (one of {sorted(known)})")
        if isinstance(value, list):
            settings[key] = [str(item) for item in value]
        elif isinstance(value, bool) or value is None:
            settings[key] = value
        else:
            # argparse converts string defaults with each flag's type, as if typed.
            settings[key] = str(value)
    return settings


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    """The agent's configuration from parsed `serve` arguments."""
    return AgentConfig(
        data_dir=args.data_dir,
        listen=tuple(args.listen or DEFAULTS.listen),
        socket_mode=_octal(args.socket_mode, "socket_mode"),
        socket_group=args.socket_group,
        tls=_tls(args),
        tokens_file=args.tokens_file,
        show_env_to_viewers=args.show_env_to_viewers,
        metrics_listen=args.metrics_listen,
        runtime=args.runtime,
        conmon=args.conmon,
        stop_grace_seconds=args.stop_grace,
        drain_seconds=parse_duration(args.drain, "drain"),
        insecure=args.insecure,
        insecure_registries=frozenset(args.insecure_registry),
        registry_auth_file=args.registry_auth_file,
        pull_timeout_seconds=parse_duration(args.pull_timeout, "pull_timeout"),
        max_concurrent=args.max_concurrent,
        max_pending=args.max_pending,
        max_pending_per_job=args.max_pending_per_job,
        api_limits=ApiLimits(
            streams=args.max_streams,
            streams_per_caller=args.max_streams_per_caller,
            request_bytes=parse_memory(args.max_request_size, "max_request_size", 0),
        ),
        priority_boost=args.priority_boost,
        max_log_bytes=parse_memory(args.max_log_size, "max_log_size", MIN_LOG_BYTES),
        min_free_bytes=parse_memory(args.min_free_space, "min_free_space", 0),
        host_policy=HostPolicy(
            bind_allowlist=tuple(args.bind_allow),
            allow_host_network=args.allow_host_network,
            allow_privileged=args.allow_privileged,
            allow_host_userns=args.allow_host_userns,
            allowed_capabilities=frozenset(
                normalize_capability(name, "allow_capability") for name in args.allow_capability
            ),
        ),
        id_ranges=parse_id_ranges(args.userns_range),
        limits=JobLimits(
            pids_limit=args.default_pids_limit or None,
            tmp_size_bytes=parse_memory(args.default_tmp_size, "default_tmp_size", 0) or None,
            cgroup_parent=args.cgroup_parent,
        ),
        retention=RetentionPolicy(
            max_age_seconds=parse_duration(args.retention_max_age, "retention_max_age"),
            per_job=args.retention_per_job,
            interval_seconds=parse_duration(args.retention_interval, "retention_interval"),
            image_budget_bytes=None
            if args.image_budget is None
            else parse_memory(args.image_budget, "image_budget", 0),
        ),
    )


def _octal(value: str, field: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise InvalidSpec(field, f"{value!r} is not an octal file mode") from None
    if not 0 <= mode <= 0o777:
        raise InvalidSpec(field, f"{value!r} is not a file mode (000 to 777)")
    return mode


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise InvalidSpec("tls_client_ca", "needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise InvalidSpec("tls", "needs both --tls-cert and --tls-key")
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)
