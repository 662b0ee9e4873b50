"""PostgreSQL partition arithmetic, pure: one partition per UTC day, named <table>_pYYYYMMDD.

A reading belongs to the day of its timestamp in UTC; partition [day, day + 1) holds it. The
timestamp is first rounded to microseconds exactly as psycopg sends it (to_datetime), so a
float a hair before midnight that PostgreSQL will see as midnight lands in the next day here
too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone
from typing import Optional

DAY = timedelta(days=1)
_SUFFIX = re.compile(r"_p(\d{8})")


def to_datetime(ts: float) -> datetime:
    """Unix seconds -> aware UTC datetime, rounded to the microsecond (as stored)."""
    return datetime.fromtimestamp(ts, timezone.utc)


def day_of(ts: float) -> date:
    return to_datetime(ts).date()


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a UTC day, as aware datetimes: a partition's FROM and TO."""
    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    return start, start + DAY


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def partition_day(table: str, name: str) -> Optional[date]:
    """The day of a partition name made by partition_name, else None (not ours)."""
    if not name.startswith(table):
        return None
    match = _SUFFIX.fullmatch(name, len(table))
    if match is None:
        return None
    try:
        return datetime.strptime(match[1], "%Y%m%d").date()
    except ValueError:
        return None


def days_for(timestamps: Iterable[float]) -> set[date]:
    """The days whose partitions rows with these timestamps need."""
    return {day_of(ts) for ts in timestamps}


def days_ahead(now: float, ahead: int) -> list[date]:
    """Today (UTC) and the `ahead` days after it: made early, so that writes seldom have to
    create a partition (which locks the parent table)."""
    today = day_of(now)
    return [today + i * DAY for i in range(ahead + 1)]


def expired_days(days: Iterable[date], now: float, retention_days: int) -> list[date]:
    """Days whose whole partition is older than retention: its end <= now - retention.

    A partition goes only when every reading in it is due, so readings are kept between
    retention_days and retention_days + 1 day.
    """
    cutoff = to_datetime(now) - timedelta(days=retention_days)
    return sorted(day for day in days if day_bounds(day)[1] <= cutoff)
