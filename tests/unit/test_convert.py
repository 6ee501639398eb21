"""Conversions between domain values and protobuf messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from agent.api.convert import duration_seconds, from_timestamp, timestamp
from agent.errors import InvalidSpec

ZONES = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.just(UTC) | ZONES,
    )
)
def test_a_timestamp_is_the_instant_protobuf_makes_of_it_and_reads_back(moment: datetime) -> None:
    reference = Timestamp()
    reference.FromDatetime(moment.astimezone(UTC))
    assert timestamp(moment) == reference
    assert from_timestamp(timestamp(moment)) == moment


def test_instants_before_the_epoch_keep_their_microseconds() -> None:
    moment = datetime(1969, 12, 31, 23, 59, 59, 250_000, tzinfo=UTC)
    assert (timestamp(moment).seconds, timestamp(moment).nanos) == (-1, 250_000_000)


def test_timestamps_and_durations_out_of_their_ranges_name_the_field() -> None:
    with pytest.raises(InvalidSpec) as caught:
        from_timestamp(Timestamp(seconds=10**15), "since")
    assert caught.value.field == "since"
    for seconds, nanos in ((1, -1), (-1, 1), (10**15, 0), (0, 10**9)):
        with pytest.raises(InvalidSpec) as caught:
            duration_seconds(Duration(seconds=seconds, nanos=nanos), "grace_period")
        assert caught.value.field == "grace_period"
    assert duration_seconds(Duration(seconds=-1, nanos=-500_000_000), "x") == -1.5
