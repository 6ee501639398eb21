"""The baselines of P5 and P7: a bare grpc.aio JobService with nothing behind it, run as
its own process, as the agent is.

- GetExecution (P5) answers one fixed, pre-built message.
- WatchEvents (P7) streams a replay: pre-built events, each handed to every open stream at
  its offset from the first, through an asyncio.Queue per stream, as the agent's event bus
  does. Each is stamped with the moment it is due, as the agent stamps an event the moment
  it records it: when the loop is still busy with the one before (the agent's events come
  in pairs, pending then initializing, running then completed), the event is handed out
  late and the lateness counts, as it does for the agent. The replay starts when a line
  arrives on stdin.

    python -m bench.bare_server PORT [--answer MESSAGE_FILE] [--replay REPLAY_FILE]

It runs its process as the agent runs its own: its threads at the agent's priority
(agent.priority) and its garbage collector settled after start-up (agent.app), so that
the two sides differ in what they do, not in how the process is tuned.

A replay file is JSON: [{"offset": seconds, "message": base64 WatchEventsResponse}, ...].
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import jobs_pb2 as pb

from agent.app import settle_garbage_collector
from agent.priority import raise_thread_priority
from agent.settings import DEFAULTS

SERVICE = "jobagent.v1.JobService"


def load_replay(path: Path) -> list[tuple[float, service_pb.WatchEventsResponse]]:
    """The (offset, event) pairs of a replay file."""
    return [
        (
            item["offset"],
            service_pb.WatchEventsResponse.FromString(base64.b64decode(item["message"])),
        )
        for item in json.loads(path.read_text())
    ]


def write_replay(path: Path, events: list[tuple[float, bytes]]) -> None:
    """Writes (offset, serialized WatchEventsResponse) pairs as a replay file."""
    path.write_text(
        json.dumps(
            [
                {"offset": offset, "message": base64.b64encode(message).decode()}
                for offset, message in events
            ]
        )
    )


class Broadcast:
    """Every open WatchEvents stream's queue; a replay hands each event to all of them."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[service_pb.WatchEventsResponse]] = set()

    async def watch(
        self, request: service_pb.WatchEventsRequest, context: Any
    ) -> AsyncIterator[service_pb.WatchEventsResponse]:
        """A stream: headers at once (the watch is in place), then every event handed out."""
        queue: asyncio.Queue[service_pb.WatchEventsResponse] = asyncio.Queue()
        self.queues.add(queue)
        try:
            await context.send_initial_metadata(())
            while True:
                yield await queue.get()
        finally:
            self.queues.discard(queue)

    async def replay(self, events: list[tuple[float, service_pb.WatchEventsResponse]]) -> None:
        """Hands out each event at its offset from the start, stamped with that moment."""
        started, started_wall = time.monotonic(), time.time_ns()
        for offset, template in events:
            await asyncio.sleep(max(0.0, started + offset - time.monotonic()))
            event = service_pb.WatchEventsResponse()
            event.CopyFrom(template)
            event.event.time.FromNanoseconds(started_wall + int(offset * 1e9))
            for queue in self.queues:
                queue.put_nowait(event)


async def serve(port: int, answer: pb.Execution | None, replay: Path | None) -> None:
    """Serves until killed."""

    async def get_execution(request: service_pb.GetExecutionRequest, context: Any) -> pb.Execution:
        return answer or pb.Execution()

    broadcast = Broadcast()
    handlers = {
        "GetExecution": grpc.unary_unary_rpc_method_handler(
            get_execution,
            request_deserializer=service_pb.GetExecutionRequest.FromString,
            response_serializer=pb.Execution.SerializeToString,
        ),
        "WatchEvents": grpc.unary_stream_rpc_method_handler(
            broadcast.watch,
            request_deserializer=service_pb.WatchEventsRequest.FromString,
            response_serializer=service_pb.WatchEventsResponse.SerializeToString,
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    settle_garbage_collector()
    if replay is not None:
        events = load_replay(replay)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await broadcast.replay(events)
    await server.wait_for_termination()


def main() -> None:
    """Parses the arguments and serves."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--answer", type=Path, help="the GetExecution answer (an Execution)")
    parser.add_argument("--replay", type=Path, help="the events WatchEvents streams get")
    args = parser.parse_args()
    answer = None if args.answer is None else pb.Execution.FromString(args.answer.read_bytes())
    raise_thread_priority(DEFAULTS.priority_boost)
    asyncio.run(serve(args.port, answer, args.replay))


if __name__ == "__main__":
    main()
