"""DownloadLogs: an attempt's log file as stored, in chunks of whole records, resumable."""

from __future__ import annotations

import grpc
import pytest
from jobagent_client import ClientError, JobAgentClient

from tests.e2e.harness import AgentProcess
from tests.e2e.test_jobs import job, run
from tests.e2e.test_surface import jobctl


def records(data: bytes) -> list[tuple[str, str, str]]:
    """(stream, tag, text) of each CRI record."""
    fields = [line.split(b" ", 3) for line in data.split(b"\n")[:-1]]
    return [(stream.decode(), tag.decode(), text.decode()) for _, stream, tag, text in fields]


def test_download_returns_the_stored_log_and_resumes(
    client: JobAgentClient, agent: AgentProcess
) -> None:
    # About 1.4 MB of records (1 MB of output, within the default cap): several chunks.
    script = (
        "i=0; while [ $i -lt 11000 ]; do i=$((i+1)); echo line $i " + "x" * 80 + "; done; "
        "echo oops >&2; printf tail"
    )
    execution = run(client, "bulk", script)
    assert execution.status == "completed"
    chunks = list(client.download_logs(execution.id))
    log_file = agent.cwd / agent.data_dir / "logs" / execution.id / "1.log"
    data = b"".join(chunk.data for chunk in chunks)
    assert data == log_file.read_bytes()
    assert len(chunks) >= 2 and all(chunk.data.endswith(b"\n") for chunk in chunks)
    assert [chunk.offset for chunk in chunks[1:]] == [
        chunk.offset + len(chunk.data) for chunk in chunks[:-1]
    ]
    # The same output the parsed stream gives, partial records included.
    lines = list(client.logs(execution.id))
    assert [(s, t == "P", text) for s, t, text in records(data)] == [
        (line.stream, line.partial, line.message) for line in lines
    ]
    assert [line.message for line in lines if line.stream == "stderr"] == ["oops"]
    stdout = [line for line in lines if line.stream == "stdout"]
    assert (stdout[-1].message, stdout[-1].partial) == ("tail", True)
    # An interrupted download resumes where it stopped.
    resumed = list(client.download_logs(execution.id, offset=chunks[1].offset))
    assert b"".join(chunk.data for chunk in resumed) == data[chunks[1].offset :]
    # jobctl writes the same bytes.
    printed = jobctl(agent, "download", execution.id)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.encode() == data


def test_download_follows_a_running_attempt_to_its_end(client: JobAgentClient) -> None:
    client.register(job("ticking", "for i in 1 2 3; do echo tick$i; sleep 0.3; done"), replace=True)
    execution = client.trigger("ticking")
    data = b"".join(chunk.data for chunk in client.download_logs(execution.id, follow=True))
    assert [text for _, _, text in records(data)] == ["tick1", "tick2", "tick3"]
    assert client.get_execution(execution.id).status == "completed"


def test_bad_offsets_name_the_field(client: JobAgentClient) -> None:
    execution = run(client, "short", "echo one")
    size = sum(len(chunk.data) for chunk in client.download_logs(execution.id))
    with pytest.raises(ClientError) as past:
        list(client.download_logs(execution.id, offset=size + 1))
    assert past.value.code is grpc.StatusCode.OUT_OF_RANGE and "offset" in past.value.message
    with pytest.raises(ClientError) as negative:
        list(client.download_logs(execution.id, offset=-1))
    assert negative.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert negative.value.field == "offset"
    with pytest.raises(ClientError) as missing:
        list(client.download_logs("0" * 32))
    assert missing.value.code is grpc.StatusCode.NOT_FOUND
    assert list(client.download_logs(execution.id, offset=size)) == []
