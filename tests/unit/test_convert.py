"""Conversions between domain values and protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from agent.api.convert import from_timestamp, timestamp

ZONES = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.just(UTC) | ZONES))  # fmt: skip
def test_a_timestamp_is_the_instant_protobuf_makes_of_it_and_reads_back(moment: datetime) -> None:
    reference = Timestamp()
    reference.FromDatetime(moment.astimezone(UTC))
    assert timestamp(moment) == reference
    assert from_timestamp(timestamp(moment)) == moment


def test_instants_before_the_epoch_keep_their_microseconds() -> None:
    moment = datetime(1969, 12, 31, 23, 59, 59, 250_000, tzinfo=UTC)
    assert (timestamp(moment).seconds, timestamp(moment).nanos) == (-1, 250_000_000)
