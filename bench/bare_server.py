"""The P5 baseline: a bare grpc.aio JobService that answers GetExecution with one fixed,
pre-built message, and nothing else. Runs as its own process, as the agent does.

    python -m bench.bare_server PORT MESSAGE_FILE
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc
from jobagent.v1 import job_service_pb2 as service_pb
from jobagent.v1 import jobs_pb2 as pb

SERVICE = "jobagent.v1.JobService"


async def serve(port: int, answer: pb.Execution) -> None:
    """Serves until killed."""

    async def get_execution(request: service_pb.GetExecutionRequest, context: Any) -> pb.Execution:
        return answer

    handler = grpc.unary_unary_rpc_method_handler(
        get_execution,
        request_deserializer=service_pb.GetExecutionRequest.FromString,
        response_serializer=pb.Execution.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"GetExecution": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), pb.Execution.FromString(Path(sys.argv[2]).read_bytes())))
