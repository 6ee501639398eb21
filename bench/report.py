"""`make bench`: runs the benchmarks one after another, each as its own process, passes on
what they print, collects the JSON line each figure ends with, and ends with one table of
every figure against its bar (met / not met), headed by where and when it was measured.

The run's JSON lines go to bench/results/run.jsonl and the table to bench/results/table.md;
`--from` draws the table again from such a file.

    python -m bench.report [--runtime youki] [--set 'P2=--jobs 48 --rounds 1'] [P1 P2 ...]
    python -m bench.report --from bench/results/run.jsonl
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

# Each benchmark's module of bench/, in the order `make bench` runs them.
BENCHES = {
    "P1": "latency",
    "P2": "throughput",
    "P3": "image_size",
    "P3c": "cold_start",
    "P3U": "userns",
    "P4": "logs",
    "P5": "unary",
    "P6": "scale",
    "P7": "watchers",
}
# The JSON lines (by their "bench") each module prints.
RECORDS = {"P4": ("P4", "P4b", "P4c")}
RESULTS = Path("bench/results")

Record = Mapping[str, object]
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
}


@dataclass(frozen=True)
class Figure:
    """One row of the table: a figure of one benchmark's JSON line and its bar.

    `key` names the field compared with the bar (`ratio`, `value`, ...); with `versus`, the
    row shows `agent`-like field `shown` against `versus` before it. No `bar`: a figure
    printed beside another, for reading, held to nothing."""

    bench: str
    what: str
    key: str
    _: KW_ONLY
    bar: tuple[str, float] | None = None
    shown: str = ""
    versus: str = ""
    unit: str = ""
    note: str = ""

    def measured(self, record: Record) -> str:
        """The figure as the table shows it."""
        value = _number(record, self.key)
        if self.versus:
            unit = str(record.get("unit", ""))
            shown, versus = _number(record, self.shown), _number(record, self.versus)
            return f"{_format(shown)} vs {_format(versus)} {unit}: {value:.2f}"
        unit = self.unit or (str(record.get("unit", "")) if self.key == "value" else "")
        return f"{_format(value)} {unit}".strip()

    def verdict(self, record: Record) -> str:
        """met, not met, or a dash for a figure without a bar."""
        if self.bar is None:
            return "-"
        sign, limit = self.bar
        return "met" if COMPARE[sign](_number(record, self.key), limit) else "not met"

    def bar_text(self) -> str:
        """The bar as the table shows it."""
        if self.bar is None:
            return "-"
        sign, limit = self.bar
        unit = f" {self.unit}" if self.unit and self.key != "ratio" else ""
        text = f"{sign} {limit:g}{unit}"
        return f"{text} ({self.note})" if self.note else text


# Every figure with its bar (issue 21 moved P2's to 0.8, set P4's at 0.05 and P5's at 0.8,
# and added the agent's CPU per job, StreamLogBatches' rate and `jobctl logs`). Figures
# "beside" another are the agent's time to its terminal event, which a scheduler waits for;
# the ratio held to the bar is to the container's removal, which the raw runtime's time
# includes.
FIGURES = (
    Figure(
        "P1",
        "`true` job, trigger to container removed, median, against `<runtime> run`",
        "ratio",
        bar=("<=", 1.5),
        shown="agent",
        versus="baseline",
    ),
    Figure(
        "P1",
        "the same, to the terminal event (beside)",
        "agent_to_terminal_ratio",
        shown="agent_to_terminal",
        versus="baseline",
    ),
    Figure(
        "P2",
        "`true` jobs at concurrency 8 to containers removed, against 8 loops of `run`",
        "ratio",
        bar=(">=", 0.8),
        shown="agent",
        versus="baseline",
    ),
    Figure(
        "P2",
        "the same, to the terminal events (beside)",
        "agent_to_terminal_ratio",
        shown="agent_to_terminal",
        versus="baseline",
    ),
    Figure(
        "P2",
        "the agent process's CPU per job",
        "agent_process_cpu_ms_per_job",
        bar=("<=", 3.0),
        unit="ms",
    ),
    Figure(
        "P2",
        "the whole machine's CPU per job, agent side",
        "agent_side_cpu_ms_per_job",
        unit="ms",
    ),
    Figure("P2", "the whole machine's CPU per job, raw side", "raw_side_cpu_ms_per_job", unit="ms"),
    Figure(
        "P3",
        "trigger to terminal from a 200 MB image, against a 1 MB image",
        "ratio",
        bar=("<=", 1.2),
        shown="agent",
        versus="baseline",
    ),
    Figure(
        "P3c",
        "cold start (10,000 files, loopback registry) to container removed, against "
        "skopeo copy + umoci raw unpack + `run`",
        "ratio",
        bar=("<=", 1.2),
        shown="agent",
        versus="baseline",
        note="proposed",
    ),
    Figure(
        "P3c",
        "the same, to the terminal event (beside)",
        "agent_to_terminal_ratio",
        shown="agent_to_terminal",
        versus="baseline",
    ),
    Figure(
        "P3U",
        "trigger to terminal in a user namespace, against the host's",
        "ratio",
        bar=("<=", 1.2),
        shown="agent",
        versus="baseline",
    ),
    Figure(
        "P4",
        "StreamLogBatches of a 100 MB output, against `cat` of its log into a reader",
        "ratio",
        bar=(">=", 0.05),
        shown="agent",
        versus="baseline",
        note="aim 0.25",
    ),
    Figure(
        "P4", "StreamLogBatches into a line-counting client", "agent", bar=(">=", 100), unit="MB/s"
    ),
    Figure(
        "P4b",
        "DownloadLogs of the same log, against `cat` into a reader",
        "ratio",
        bar=(">=", 0.25),
        shown="agent",
        versus="baseline",
    ),
    Figure(
        "P4c", "`jobctl logs` of a 185,000-line log to /dev/null", "value", bar=("<", 1.0), unit="s"
    ),
    Figure(
        "P5",
        "unary GetExecution under ghz, against a bare grpc.aio server",
        "ratio",
        bar=(">=", 0.8),
        shown="agent",
        versus="baseline",
    ),
    Figure(
        "P5",
        "the same, of an execution still running (beside)",
        "agent_running_ratio",
        shown="agent_running",
        versus="baseline",
    ),
    Figure(
        "P6", "ListExecutions page of 100 among 100,000, p99", "value", bar=("<", 10.0), unit="ms"
    ),
    Figure("P6", "the agent's RSS with 100,000 executions", "rss_mb", bar=("<", 150.0), unit="MB"),
    Figure(
        "P7",
        "transition to arrival on each of 1,000 WatchEvents streams, p99",
        "value",
        bar=("<", 50.0),
        unit="ms",
    ),
    Figure("P7", "the same from a bare grpc.aio fan-out (beside)", "baseline_ms", unit="ms"),
)


def _number(record: Record, key: str) -> float:
    value = record[key]
    assert isinstance(value, int | float), (key, value)
    return float(value)


def _format(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def rows(records: Mapping[str, Record], benches: Iterable[str]) -> list[tuple[Figure, str, str]]:
    """Every figure of `benches` (ids of BENCHES) with what was measured and its verdict:
    met, not met, a dash (no bar), or not run when its benchmark printed no JSON line."""
    ids = {name for bench in benches for name in RECORDS.get(bench, (bench,))}
    found: list[tuple[Figure, str, str]] = []
    for figure in FIGURES:
        if figure.bench not in ids:
            continue
        record = records.get(figure.bench)
        if record is None or figure.key not in record:
            found.append((figure, "-", "not run"))
        else:
            found.append((figure, figure.measured(record), figure.verdict(record)))
    return found


def table(records: Mapping[str, Record], benches: Iterable[str]) -> list[str]:
    """The markdown table of every figure of `benches` against its bar."""
    lines = ["| id | figure | measured | bar | verdict |", "|---|---|---|---|---|"]
    for figure, measured, verdict in rows(records, benches):
        lines.append(
            f"| {figure.bench} | {figure.what} | {measured} | {figure.bar_text()} | {verdict} |"
        )
    return lines


def summary(records: Mapping[str, Record], benches: Iterable[str]) -> str:
    """How many of the figures with a bar met it."""
    held = [verdict for figure, _, verdict in rows(records, benches) if figure.bar is not None]
    return (
        f"{held.count('met')} of {len(held)} bars met, {held.count('not met')} not met, "
        f"{held.count('not run')} not run"
    )


def machine(runtime: str) -> str:
    """Where and when: the date, CPUs and their model, memory, kernel, runtime, load."""
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    try:
        version = subprocess.run(
            [runtime, "--version"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0]
    except (OSError, IndexError):
        version = runtime
    return (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} CPUs ({model}), "
        f"{memory:.0f} GiB, kernel {platform.release()}, {version}, Python "
        f"{platform.python_version()}"
    )


def load() -> str:
    """The load averages over 1, 5 and 15 minutes."""
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def run_bench(bench: str, runtime: str, extra: Sequence[str]) -> tuple[list[Record], int]:
    """Runs one benchmark's module, passing its output on; its JSON lines and exit status."""
    command = [sys.executable, "-m", f"bench.{BENCHES[bench]}", "--runtime", runtime, *extra]
    print(f"== {bench}: {shlex.join(command[1:])}", flush=True)
    records: list[Record] = []
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment) as child:
        assert child.stdout is not None
        for line in child.stdout:
            print(line, end="", flush=True)
            if record := parse(line):
                records.append(record)
    return records, child.returncode


def parse(line: str) -> Record | None:
    """A benchmark's JSON line (an object with a "bench"), else None."""
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "bench" in record else None


def main() -> int:
    """Runs the benchmarks (or reads a run's JSON lines) and prints the table; the exit
    status says whether every benchmark ran, not whether the bars were met."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("benches", nargs="*", help=f"ids among {' '.join(BENCHES)} (all)")
    parser.add_argument("--runtime", default="youki")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ID=ARGS",
        help="extra arguments for one benchmark, e.g. 'P2=--jobs 48 --rounds 1'",
    )
    parser.add_argument("--from", dest="source", type=Path, help="a run's JSON lines")
    args = parser.parse_args()
    benches = args.benches or list(BENCHES)
    if unknown := [bench for bench in benches if bench not in BENCHES]:
        parser.error(f"unknown benchmarks: {' '.join(unknown)}")
    extra: dict[str, list[str]] = {}
    for setting in args.set:
        bench, _, text = setting.partition("=")
        extra[bench] = shlex.split(text)
    records: dict[str, Record] = {}
    failed: list[str] = []
    if args.source is not None:
        for line in args.source.read_text().splitlines():
            if record := parse(line):
                records[str(record["bench"])] = record
        header = f"from {args.source}"
    else:
        started, load_before = time.monotonic(), load()
        where = machine(args.runtime)
        RESULTS.mkdir(parents=True, exist_ok=True)
        with (RESULTS / "run.jsonl").open("w") as run_log:
            for bench in benches:
                found, status = run_bench(bench, args.runtime, extra.get(bench, []))
                if status != 0:
                    failed.append(bench)
                for record in found:
                    records[str(record["bench"])] = record
                    run_log.write(json.dumps(record) + "\n")
        minutes = (time.monotonic() - started) / 60
        header = (
            f"{' '.join(benches)} on {where}; {minutes:.1f} min, load average "
            f"{load_before} before, {load()} after"
        )
    lines = [header, "", *table(records, benches), "", summary(records, benches)]
    if failed:
        lines.append(f"failed: {' '.join(failed)}")
    text = "\n".join(lines)
    print(f"\n{text}")
    if args.source is None:
        (RESULTS / "table.md").write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
