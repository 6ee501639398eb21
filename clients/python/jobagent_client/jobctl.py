"""jobctl: the command line of the jobagent node agent."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc

from jobagent_client.client import ClientError, JobAgentClient, PlainTextToken, tls_credentials
from jobagent_client.local import (
    ADDRESS_ENV,
    DEFAULT_ADDRESS,
    DEFAULT_TOKEN_FILE,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    find_address,
    find_token,
)
from jobagent_client.models import Bookmark, Execution, ExecutionEvent, Job, JobEvent, LogBatch

EXECUTION_COLUMNS = ("id", "job_name", "status", "exit_code", "failure_reason", "created_at")
JOB_COLUMNS = ("name", "kind", "deployment", "image", "schedule", "next_run_time")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="jobctl", description=__doc__)
    parser.add_argument(
        "--target",
        help=f"agent address, host:port or unix:/PATH (default ${ADDRESS_ENV}, else "
        f"{DEFAULT_ADDRESS})",
    )
    parser.add_argument("--token", help=f"bearer token (default ${TOKEN_ENV})")
    parser.add_argument(
        "--token-file",
        type=Path,
        help=f"a file holding the bearer token (default ${TOKEN_FILE_ENV}, else "
        f"{DEFAULT_TOKEN_FILE} when readable)",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS (implied by the files below)")
    parser.add_argument("--ca-file", type=Path, help="CA (PEM) that the agent's cert chains to")
    parser.add_argument("--cert-file", type=Path, help="client certificate (PEM), for mTLS")
    parser.add_argument("--key-file", type=Path, help="the client certificate's key (PEM)")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    commands = parser.add_subparsers(dest="command", required=True)

    register = commands.add_parser("register", help="register the jobs of a deployment file")
    register.add_argument("file", type=Path)
    register.add_argument("--replace", action="store_true", help="replace changed jobs")
    commands.add_parser("jobs", help="list jobs")
    commands.add_parser("job", help="show a job").add_argument("name")
    commands.add_parser("unregister", help="remove a job").add_argument("name")
    commands.add_parser("suspend", help="suspend a cron job's schedule").add_argument("name")
    commands.add_parser("resume", help="resume a cron job's schedule").add_argument("name")

    trigger = commands.add_parser("trigger", help="start an execution of a job")
    trigger.add_argument("name")
    trigger.add_argument(
        "--wait", action="store_true", help="wait for the end and exit with its code"
    )
    trigger.add_argument("--follow", action="store_true", help="print its output while it runs")
    trigger.add_argument("--request-id", default="", help="repeat-safe id (a UUID)")
    trigger.add_argument("--arg", action="append", default=[], help="append an arg (repeat)")
    trigger.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set an env variable the job allows (repeat)",
    )
    trigger.add_argument("--payload-file", type=Path, help="a file to hand to the job")

    commands.add_parser("get", help="show an execution").add_argument("id")
    listing = commands.add_parser("list", help="list executions, newest first")
    listing.add_argument("--job", default="")
    cancel = commands.add_parser("cancel", help="cancel an execution")
    cancel.add_argument("id")
    cancel.add_argument("--grace", type=float, help="seconds before SIGKILL")
    cancel.add_argument("--signal", default="", help="stop signal (the job's when unset)")
    commands.add_parser("watch", help="print an execution's transitions").add_argument("id")
    commands.add_parser("prune-images", help="remove images that no job uses")
    commands.add_parser("node", help="versions, capacity, load and limits of the node")
    events = commands.add_parser("events", help="print the node's events (and follow them)")
    events.add_argument("--since", type=int, default=0, help="resume after this sequence")
    events.add_argument("--job", default="")
    events.add_argument("-f", "--follow", action="store_true", help="go on with new events")

    logs = commands.add_parser("logs", help="print an execution's output")
    logs.add_argument("id")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--tail", type=int, default=0)
    logs.add_argument("--stream", choices=("stdout", "stderr"), default="")
    logs.add_argument("--attempt", type=int, default=0, help="which attempt (latest when 0)")

    download = commands.add_parser(
        "download", help="write an execution's log file as stored (CRI format) to stdout"
    )
    download.add_argument("id")
    download.add_argument("-f", "--follow", action="store_true")
    download.add_argument("--attempt", type=int, default=0, help="which attempt (latest when 0)")
    download.add_argument("--offset", type=int, default=0, help="start at this byte")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns the exit status."""
    args = build_parser().parse_args(argv)
    printer = Printer(args.output)
    try:
        token = args.token or find_token(args.token_file)
    except OSError as error:
        print(f"jobctl: cannot read the token: {error}", file=sys.stderr)
        return 2
    try:
        credentials = None
        if args.tls or args.ca_file or args.cert_file:
            credentials = tls_credentials(args.ca_file, args.cert_file, args.key_file)
        target = args.target or find_address()
        with JobAgentClient.connect(target, credentials=credentials, token=token) as client:
            return COMMANDS[args.command](client, args, printer)
    except ClientError as error:
        named = error.field and error.field not in error.message
        where = f" (field {error.field})" if named else ""
        hint = ""
        if error.code is grpc.StatusCode.UNAUTHENTICATED and not token:
            hint = f" (no token given: --token, ${TOKEN_ENV} or ${TOKEN_FILE_ENV})"
        print(f"jobctl: {error}{where}{hint}", file=sys.stderr)
        return 1
    except PlainTextToken as error:
        print(f"jobctl: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (jobctl logs ... | head): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


class Printer:
    """Prints records as an aligned table or as JSON lines."""

    def __init__(self, output: str) -> None:
        self.json = output == "json"

    def records(self, items: Sequence[Execution | Job], columns: Sequence[str]) -> None:
        """Prints a list of records."""
        if self.json:
            print(json.dumps([_plain(item) for item in items], default=str, indent=2))
            return
        rows = [[str(_cell(getattr(item, column))) for column in columns] for item in items]
        widths = [
            max([len(column), *(len(row[i]) for row in rows)]) for i, column in enumerate(columns)
        ]
        for row in [[column.upper() for column in columns], *rows]:
            print(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )

    def record(self, item: Execution | Job) -> None:
        """Prints one record, a field a line."""
        data = _plain(item)
        if self.json:
            print(json.dumps(data, default=str, indent=2))
            return
        for key, value in data.items():
            if key == "attempts":
                for attempt in value:
                    code = _cell(attempt["exit_code"])
                    print(
                        f"{'attempt:':<16}#{attempt['number']} exit_code={code} "
                        f"{attempt['message']}"
                    )
                continue
            print(f"{key + ':':<16}{_cell(value)}")

    def event(self, item: ExecutionEvent | JobEvent) -> None:
        """Prints one node event as it arrives."""
        if isinstance(item, JobEvent):
            data: dict[str, Any] = asdict(item)
            what, subject = (f"{item.type}: {item.message}" if item.message else item.type), "-"
        else:
            data = {"sequence": item.sequence, "type": item.type, **_plain(item.execution)}
            execution = item.execution
            what = execution.status if item.type == "transition" else item.message
            subject = execution.id
        if self.json:
            print(json.dumps(data, default=str), flush=True)
        else:
            job_name = item.job_name if isinstance(item, JobEvent) else item.execution.job_name
            print(f"{item.sequence:>8}  {job_name}  {subject:<32}  {what}", flush=True)

    def log_batch(self, batch: LogBatch) -> None:
        """Prints a batch of output lines (stderr lines go to stderr), in their order."""
        if self.json:
            for line in batch.lines():
                print(json.dumps(asdict(line), default=str))
            sys.stdout.flush()
            return
        run: list[str] = []
        current = ""
        for index, message in enumerate(batch.messages):
            if batch.streams[index] != current and run:
                _write(current, run)
                run = []
            current = batch.streams[index]
            run.append(message if index in batch.partial else message + "\n")
        if run:
            _write(current, run)


def _write(stream: str, pieces: list[str]) -> None:
    """Writes consecutive lines of one output stream, at once."""
    out = sys.stderr if stream == "stderr" else sys.stdout
    out.write("".join(pieces))
    out.flush()


def _plain(item: Execution | Job) -> dict[str, Any]:
    data = asdict(item)
    for key, value in data.items():
        if isinstance(value, timedelta):
            data[key] = value.total_seconds()
    return data


def _cell(value: Any) -> Any:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return value


def _register(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    printer.records(client.register(args.file.read_text(), replace=args.replace), JOB_COLUMNS)
    return 0


def _jobs(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    printer.records(client.list_jobs(), JOB_COLUMNS)
    return 0


def _job(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    printer.record(client.get_job(args.name))
    return 0


def _suspend(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    printer.record(client.suspend(args.name))
    return 0


def _resume(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    printer.record(client.resume(args.name))
    return 0


def _unregister(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    client.unregister(args.name)
    return 0


def _trigger(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    env = dict(item.partition("=")[::2] for item in args.env)
    payload = args.payload_file.read_bytes() if args.payload_file else b""
    execution = client.trigger(
        args.name,
        from_cli=True,
        request_id=args.request_id,
        args=args.arg,
        env=env,
        payload=payload,
    )
    if args.follow:
        for batch in client.log_batches(execution.id, follow=True):
            printer.log_batch(batch)
    if args.wait or args.follow:
        execution = client.wait(execution.id)
        printer.record(execution)
        return 0 if execution.status == "completed" else (execution.exit_code or 1)
    printer.record(execution)
    return 0


def _get(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    printer.record(client.get_execution(args.id))
    return 0


def _list(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    printer.records(client.list_executions(job_name=args.job), EXECUTION_COLUMNS)
    return 0


def _cancel(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    grace = None if args.grace is None else timedelta(seconds=args.grace)
    printer.record(client.cancel(args.id, grace, args.signal))
    return 0


def _watch(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    for event in client.watch(args.id):
        execution = event.execution
        if printer.json:
            print(json.dumps({"sequence": event.sequence, **_plain(execution)}, default=str))
        else:
            code = "" if execution.exit_code is None else f" exit_code={execution.exit_code}"
            what = execution.status if event.type == "transition" else event.message
            print(f"{event.sequence:>8}  {_cell(event.time)}  {what}{code}")
    return 0


def _download(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    chunks = client.download_logs(
        args.id, follow=args.follow, attempt=args.attempt, offset=args.offset
    )
    for chunk in chunks:
        sys.stdout.buffer.write(chunk.data)
        if args.follow:
            sys.stdout.buffer.flush()
    return 0


def _logs(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    batches = client.log_batches(
        args.id, follow=args.follow, tail_lines=args.tail, stream=args.stream, attempt=args.attempt
    )
    for batch in batches:
        printer.log_batch(batch)
    return 0


def _events(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    # Without --follow: up to the newest event there is now.
    newest = None if args.follow else client.node_info().last_sequence
    if newest is not None and newest <= args.since:
        return 0
    interval = None if args.follow else timedelta(milliseconds=200)
    for item in client.watch_events(args.since, args.job, bookmark_interval=interval):
        if newest is not None and item.sequence >= newest:
            if not isinstance(item, Bookmark):
                printer.event(item)
            return 0
        if not isinstance(item, Bookmark):
            printer.event(item)
    return 0


def _node(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    info = asdict(client.node_info())
    if printer.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key + ':':<20}{value}")
    return 0


def _prune_images(client: JobAgentClient, args: argparse.Namespace, printer: Printer) -> int:
    removed, freed = client.prune_images()
    if printer.json:
        print(json.dumps({"removed": removed, "freed_bytes": freed}))
    else:
        for reference in removed:
            print(reference)
        print(f"freed {freed} bytes")
    return 0


COMMANDS: dict[str, Callable[[JobAgentClient, argparse.Namespace, Printer], int]] = {
    "register": _register,
    "jobs": _jobs,
    "job": _job,
    "unregister": _unregister,
    "suspend": _suspend,
    "resume": _resume,
    "trigger": _trigger,
    "get": _get,
    "list": _list,
    "cancel": _cancel,
    "watch": _watch,
    "logs": _logs,
    "download": _download,
    "prune-images": _prune_images,
    "events": _events,
    "node": _node,
}


if __name__ == "__main__":
    raise SystemExit(main())
