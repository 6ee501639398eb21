"""Settings from flags and from a config file, and the annotated file in deploy/."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.config import AgentConfig
from agent.errors import InvalidSpec
from agent.settings import config_from_args, load_config_file

REPO = Path(__file__).resolve().parents[2]
DEPLOY_CONFIG = REPO / "deploy" / "agent.yaml"


def settings_of(argv: list[str]) -> AgentConfig:
    args = build_parser().parse_args(argv)
    known = set(vars(args)) - {"command", "config"}
    if args.config is not None:
        args = build_parser(load_config_file(args.config, known)).parse_args(argv)
    return config_from_args(args)


def test_the_annotated_deploy_config_is_valid_and_names_every_setting() -> None:
    config = settings_of(["serve", "--config", str(DEPLOY_CONFIG)])
    config.check()
    assert config.listen == ("unix:/run/jobagent/jobagent.sock",)
    assert (config.socket_mode, config.socket_group) == (0o660, "")
    text = DEPLOY_CONFIG.read_text()
    every = set(vars(build_parser().parse_args(["serve"]))) - {"command", "config"}
    assert {name for name in every if f"{name}:" not in text} == set()


def test_flags_win_over_the_file_and_values_take_the_flags_types(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "max_concurrent: 8\nstop_grace: 3\ndata_dir: /srv/agent\n"
        "retention_max_age: 2d\nallow_host_network: true\n"
    )
    config = settings_of(["serve", "--config", str(path), "--max-concurrent", "4"])
    assert config.max_concurrent == 4
    assert config.stop_grace_seconds == 3.0
    assert config.data_dir == Path("/srv/agent")
    assert config.retention.max_age_seconds == 2 * 86400
    assert config.host_policy.allow_host_network


def test_an_unknown_setting_is_named(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("max_concurent: 8\n")
    with pytest.raises(InvalidSpec) as caught:
        settings_of(["serve", "--config", str(path)])
    assert caught.value.field == "config.max_concurent"


@pytest.mark.parametrize("boost", [-1, 40])
def test_a_priority_boost_beyond_the_nice_range_is_refused(boost: int) -> None:
    config = settings_of(["serve", "--priority-boost", str(boost)])
    with pytest.raises(InvalidSpec) as caught:
        config.check()
    assert caught.value.field == "priority_boost"
