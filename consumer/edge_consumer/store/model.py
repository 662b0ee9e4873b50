"""The rows a telemetry store holds, and how a validated message becomes one (stdlib only)."""

from __future__ import annotations

import json
import math
import time
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

from ..validation import Telemetry

if TYPE_CHECKING:  # the anomaly package imports its detectors: not needed to store rows
    from ..anomaly.record import Anomaly

# Device timestamps outside [TS_MIN, TS_MAX) are refused before they reach a store: a row the
# database cannot take (PostgreSQL's timestamps end in 294276, Python's in 9999) would fail its
# batch on every retry and stall the writer for good. 2100 is far beyond any sane clock.
TS_MIN = 0.0
TS_MAX = 4_102_444_800.0  # 2100-01-01T00:00:00Z

# Stores keep "no epoch" (an agent from before epochs) as -1, never NULL: NULLs are distinct in
# a unique key, so NULL would make every redelivery of such a reading a new row. Validation
# accepts only epochs >= 0, so -1 cannot collide with a real one.
NO_EPOCH = -1


class TelemetryRow(NamedTuple):
    """One reading. The store's key is (device_id, epoch, seq): see TelemetryStore."""

    device_id: str
    seq: int
    epoch: Optional[int]  # None: an agent from before epochs
    ts: float  # the device's publish time, Unix seconds: what ranges and retention use
    source_ts: Optional[float]  # the replayed sensor's own timestamp (the dataset's `ts`)
    device_name: str
    source_device: Optional[str]  # the replayed sensor's MAC (the dataset's `device`)
    temp: float
    humidity: float
    co: float
    lpg: float
    smoke: float
    light: bool
    motion: bool


class AnomalyRow(NamedTuple):
    """One finding of an anomaly detector (edge_consumer.anomaly.record.Anomaly, reordered)."""

    device_id: str
    seq: int
    ts: float  # the reading's device timestamp
    sensor: str  # e.g. "temp", "temp,humidity", "*" for the device
    kind: str  # e.g. "spike", "stuck", "dropout"
    value: Optional[float]  # None: not a finite number (stored as NULL)
    score: Optional[float]
    detail: Optional[str] = None  # one line for people


def _finite(value: Optional[float]) -> Optional[float]:
    return value if value is not None and math.isfinite(value) else None


def anomaly_params(row: AnomalyRow) -> AnomalyRow:
    """row with a checked ts and non-finite numbers as None: SQLite would store a NaN as NULL
    anyway (and fail the batch on a NOT NULL column), PostgreSQL as NaN; both store NULL."""
    return row._replace(ts=check_ts(row.ts), value=_finite(row.value), score=_finite(row.score))


def anomaly_row(anomaly: Anomaly) -> AnomalyRow:
    """The store row of an anomaly engine's finding."""
    a = anomaly
    return AnomalyRow(a.device_id, a.seq, a.ts, a.sensor, a.kind, a.value, a.score, a.detail)


class RetentionResult(NamedTuple):
    cutoff: float  # readings older than this (Unix seconds) were due to go
    rows_deleted: Optional[int]  # None when whole partitions went without counting rows
    partitions_dropped: tuple[str, ...] = ()


def check_ts(ts: float) -> float:
    """ts, if a store can hold it; else ValueError (see TS_MIN/TS_MAX)."""
    if not (math.isfinite(ts) and TS_MIN <= ts < TS_MAX):
        raise ValueError(f"timestamp {ts!r} is outside 1970..2100")
    return ts


def _optional_number(value: Any) -> Optional[float]:
    # bool is an int subclass: a JSON true is not a timestamp.
    if type(value) in (int, float) and math.isfinite(value):
        return float(value)
    return None


def telemetry_row(message: Telemetry) -> TelemetryRow:
    """The store row of a validated message; ValueError if its ts is out of range.

    `source` is optional and its fields unchecked by validation: a missing or malformed one
    becomes None rather than a rejected reading.
    """
    data = message.data
    source = message.message.get("source")
    source_ts: Optional[float] = None
    source_device: Optional[str] = None
    if isinstance(source, dict):
        source_ts = _optional_number(source.get("ts"))
        device = source.get("device")
        source_device = device if isinstance(device, str) and "\x00" not in device else None
    return TelemetryRow(
        device_id=message.device_id,
        seq=message.seq,
        epoch=message.epoch,
        ts=check_ts(message.ts),
        source_ts=source_ts,
        device_name=message.device_name,
        source_device=source_device,
        temp=float(data["temp"]),
        humidity=float(data["humidity"]),
        co=float(data["co"]),
        lpg=float(data["lpg"]),
        smoke=float(data["smoke"]),
        light=bool(data["light"]),
        motion=bool(data["motion"]),
    )


# --- dead letters -------------------------------------------------------------------------------

DEAD_TELEMETRY = "telemetry"
DEAD_ANOMALY = "anomaly"
DEAD_KINDS = (DEAD_TELEMETRY, DEAD_ANOMALY)


class DeadLetter(NamedTuple):
    """A row the database refused on its own (BatchWriter isolated it), kept with its error in
    the store's `dead_letters` table instead of stalling every later acknowledgement.

    `key` and `fields` are JSON in ASCII (json.dumps' escapes): any value the consumer held,
    a NUL, a lone surrogate, an integer beyond 64 bits or a NaN, survives in a text column of
    either database. recover() gives the row back as the consumer had it.
    """

    kind: str  # DEAD_TELEMETRY or DEAD_ANOMALY: the table the row was meant for
    device_id: str  # printable (escaped like the JSON when it is not)
    key: str  # JSON: [device_id, epoch, seq] of a reading, [device_id, seq, ts, sensor, kind]
    fields: str  # JSON object: the row's every field, by name
    error: str  # the database's (or driver's) refusal, one line
    at: float  # when it was dead-lettered (Unix seconds)

    def recover(self) -> Union[TelemetryRow, AnomalyRow]:
        """The row as it was refused (for a replay once the cause is fixed)."""
        values = json.loads(self.fields)
        if self.kind == DEAD_TELEMETRY:
            return TelemetryRow(**values)
        return AnomalyRow(**values)


def _ascii(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, allow_nan=True)


def _printable(text: str) -> str:
    """text unless a database may refuse it (a NUL, a lone surrogate): then its JSON escape."""
    if not text.isprintable():  # a NUL, a control character
        return _ascii(text)[1:-1]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _ascii(text)[1:-1]
    return text


def dead_letter(
    row: Union[TelemetryRow, AnomalyRow], error: BaseException, at: Optional[float] = None
) -> DeadLetter:
    """The dead letter of a refused row, with its error as one printable line."""
    key: list[Any]
    if isinstance(row, TelemetryRow):
        kind, key = DEAD_TELEMETRY, [row.device_id, row.epoch, row.seq]
    else:
        kind, key = DEAD_ANOMALY, [row.device_id, row.seq, row.ts, row.sensor, row.kind]
    message = " ".join(f"{type(error).__name__}: {error}".split())
    return DeadLetter(
        kind=kind,
        device_id=_printable(row.device_id),
        key=_ascii(key),
        fields=_ascii(row._asdict()),
        error=_printable(message),
        at=time.time() if at is None else at,
    )
