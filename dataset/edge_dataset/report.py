"""Figures of a loaded dataset and how they compare with the published real file."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from . import published as pub
from .reader import Dataset


@dataclass(frozen=True)
class Figures:
    rows: int
    unique_rows: int
    per_device: dict[str, int]
    first: str  # ISO UTC, milliseconds
    last: str

    @property
    def duplicates(self) -> int:
        return self.rows - self.unique_rows

    @property
    def span_days(self) -> float:
        return (_parse(self.last) - _parse(self.first)).total_seconds() / 86_400


def iso_utc(ts: float) -> str:
    ms = round(ts * 1000)  # the published times are rounded to the millisecond
    moment = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


def figures(ds: Dataset, unique_rows: int) -> Figures:
    return Figures(
        rows=ds.rows,
        unique_rows=unique_rows,
        per_device=ds.rows_per_device(),
        first=iso_utc(float(ds.ts.min())),
        last=iso_utc(float(ds.ts.max())),
    )


def differences(fig: Figures) -> list[str]:
    """How fig differs from the published real file; empty when every figure matches."""
    diffs = []
    if fig.rows != pub.ROWS:
        diffs.append(f"{fig.rows:,} rows, published {pub.ROWS:,}")
    if fig.duplicates != pub.DUPLICATES:
        diffs.append(f"{fig.duplicates} duplicate rows, published {pub.DUPLICATES}")
    for sensor in pub.SENSORS:
        got = fig.per_device.get(sensor.mac, 0)
        if got != sensor.rows:
            diffs.append(f"{sensor.mac} has {got:,} rows, published {sensor.rows:,}")
    unknown = sorted(set(fig.per_device) - set(pub.MACS))
    if unknown:
        diffs.append(f"devices not in the published file: {', '.join(unknown)}")
    if (fig.first, fig.last) != (pub.FIRST_READING, pub.LAST_READING):
        diffs.append(
            f"time range {fig.first} .. {fig.last}, published "
            f"{pub.FIRST_READING} .. {pub.LAST_READING}"
        )
    return diffs
