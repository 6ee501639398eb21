"""The benchmark report: JSON lines in, one table of every figure against its bar out."""

from __future__ import annotations

from bench.report import parse, rows, summary, table


def test_only_a_benchmarks_json_object_is_a_record() -> None:
    assert parse('{"bench": "P1", "ratio": 1.2}') == {"bench": "P1", "ratio": 1.2}
    assert parse("P1 agent 40 ms") is None
    assert parse('{"no": "bench"}') is None
    assert parse("{broken") is None
    assert parse("[1, 2]") is None


def test_each_figure_is_held_to_its_bar_and_a_missing_one_is_not_run() -> None:
    p1 = {
        "bench": "P1",
        "ratio": 1.6,
        "agent": 48.0,
        "baseline": 30.0,
        "unit": "ms",
        "agent_to_terminal": 42.0,
        "agent_to_terminal_ratio": 1.4,
    }
    p5 = {"bench": "P5", "ratio": 0.85, "agent": 8500.0, "baseline": 10000.0, "unit": "rps"}
    records = {"P1": p1, "P5": p5}
    verdicts = {
        (figure.bench, figure.key): verdict
        for figure, _, verdict in rows(records, ["P1", "P5", "P2"])
    }
    assert verdicts[("P1", "ratio")] == "not met"  # bar <= 1.5
    assert verdicts[("P1", "agent_to_terminal_ratio")] == "-"  # beside, no bar
    assert verdicts[("P5", "ratio")] == "met"  # bar >= 0.8
    assert verdicts[("P2", "ratio")] == "not run"
    lines = table(records, ["P1"])
    assert lines[2].startswith("| P1 |") and "48.0 vs 30.0 ms: 1.60" in lines[2]
    assert "<= 1.5" in lines[2] and lines[2].endswith("| not met |")
    assert summary(records, ["P1", "P5"]) == "1 of 2 bars met, 1 not met, 0 not run"
