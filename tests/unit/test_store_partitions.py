"""PostgreSQL partition arithmetic: pure functions, UTC days, names, retention boundaries."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
from edge_consumer.store.partitions import (
    day_bounds,
    day_of,
    days_ahead,
    days_for,
    expired_days,
    partition_day,
    partition_name,
    to_datetime,
)

MIDNIGHT = datetime(2026, 11, 29, tzinfo=timezone.utc).timestamp()  # 1795910400.0


def test_day_of_is_the_utc_day() -> None:
    assert day_of(MIDNIGHT) == date(2026, 11, 29)
    assert day_of(MIDNIGHT - 1e-6) == date(2026, 11, 28)
    assert day_of(MIDNIGHT + 86_399.999_999) == date(2026, 11, 29)
    assert day_of(MIDNIGHT + 86_400) == date(2026, 11, 30)
    assert day_of(0.0) == date(1970, 1, 1)


def test_a_float_that_rounds_to_midnight_belongs_to_the_next_day() -> None:
    # 0.4 us before midnight: stored (and compared by PostgreSQL) as 00:00:00.000000.
    ts = MIDNIGHT - 4e-7
    assert ts < MIDNIGHT
    assert to_datetime(ts) == datetime(2026, 11, 29, tzinfo=timezone.utc)
    assert day_of(ts) == date(2026, 11, 29)
    start, end = day_bounds(day_of(ts))
    assert start <= to_datetime(ts) < end


def test_day_bounds_are_utc_and_one_day_apart() -> None:
    start, end = day_bounds(date(2024, 2, 28))
    assert start == datetime(2024, 2, 28, tzinfo=timezone.utc)
    assert end == datetime(2024, 2, 29, tzinfo=timezone.utc)  # leap year
    assert day_bounds(date(2026, 12, 31))[1] == datetime(2027, 1, 1, tzinfo=timezone.utc)
    assert start.utcoffset() is not None and start.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_partition_names_round_trip() -> None:
    assert partition_name("telemetry", date(2026, 11, 29)) == "telemetry_p20261129"
    assert partition_name("anomalies", date(2027, 1, 5)) == "anomalies_p20270105"
    for day in (date(1970, 1, 1), date(2026, 11, 29), date(2099, 12, 31)):
        assert partition_day("telemetry", partition_name("telemetry", day)) == day


@pytest.mark.parametrize(
    "name",
    [
        "telemetry",
        "telemetry_heads",
        "telemetry_p2026112",
        "telemetry_p202611290",
        "telemetry_p20261332",  # no 13th month
        "telemetry_default",
        "anomalies_p20261129",  # another table's
        "telemetry_x20261129",
    ],
)
def test_names_that_are_not_our_partitions(name: str) -> None:
    assert partition_day("telemetry", name) is None


def test_days_for_a_batch() -> None:
    assert days_for([]) == set()
    assert days_for([MIDNIGHT - 1, MIDNIGHT, MIDNIGHT + 5, MIDNIGHT + 86_400]) == {
        date(2026, 11, 28),
        date(2026, 11, 29),
        date(2026, 11, 30),
    }


def test_days_ahead() -> None:
    assert days_ahead(MIDNIGHT + 3600, 1) == [date(2026, 11, 29), date(2026, 11, 30)]
    assert days_ahead(MIDNIGHT - 1, 0) == [date(2026, 11, 28)]
    assert days_ahead(MIDNIGHT + 86_399, 2)[-1] == date(2026, 12, 1)


def test_a_partition_expires_when_its_end_is_older_than_retention() -> None:
    days = [date(2026, 11, d) for d in range(20, 30)]
    now = MIDNIGHT + 6 * 3600  # 2026-11-29T06:00Z; cutoff for 7 days: 2026-11-22T06:00Z
    # [22nd, 23rd) still holds readings younger than the cutoff: kept.
    assert expired_days(days, now, 7) == [date(2026, 11, 20), date(2026, 11, 21)]
    # Seven days after the 22nd's end (2026-11-30T00:00Z) the 22nd goes too, not a ms before.
    assert expired_days(days, MIDNIGHT + 86_400, 7)[-1] == date(2026, 11, 22)
    assert expired_days(days, MIDNIGHT + 86_400 - 1e-3, 7)[-1] == date(2026, 11, 21)
    assert expired_days(days, now, 30) == []
    assert expired_days(reversed(days), now, 7) == [date(2026, 11, 20), date(2026, 11, 21)]
