"""Telemetry validation: bytes in, a Telemetry or an invalid-reason name out; never raises.

Checks run cheapest first (topic, size, UTF-8, JSON) and the first problem found is the
reason. Unknown top-level fields are allowed; `source` and `stats` are optional, but when
present they must be objects (and stats counters non-negative integers).
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple, Optional, Union

REASONS = (
    "not_utf8",
    "not_json",
    "not_object",
    "missing_field",
    "bad_type",
    "non_finite",
    "id_mismatch",
    "oversize",
    "bad_topic",
)
NUMERIC_FIELDS = ("temp", "humidity", "co", "lpg", "smoke")
BOOL_FIELDS = ("light", "motion")
STATS_FIELDS = ("overflow", "reconnects", "skipped_rows")

_isfinite = math.isfinite
_loads = json.loads


class Telemetry(NamedTuple):
    device_id: str
    device_name: str
    ts: float
    seq: int
    data: dict[str, Any]  # validated: NUMERIC_FIELDS are finite numbers, BOOL_FIELDS bools
    stats: Optional[dict[str, Any]]  # validated counters, or None when absent
    message: dict[str, Any]  # the whole decoded payload, for JSON output


class Invalid(Exception):
    """Internal: carries the reason out of nested checks."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _number(value: Any) -> float:
    # type() rather than isinstance(): bool is an int subclass and must be rejected.
    kind = type(value)
    if kind is float:
        if not _isfinite(value):
            raise Invalid("non_finite")
        return value  # type: ignore[no-any-return]
    if kind is int:
        try:
            return float(value)
        except OverflowError:  # a huge integer literal cannot be a measurement
            raise Invalid("non_finite") from None
    raise Invalid("bad_type")


def device_from_topic(topic: str, prefix: str) -> Optional[str]:
    """The device ID of '<prefix>/<id>' (exactly one non-empty level), else None."""
    if len(topic) <= len(prefix) + 1 or not topic.startswith(prefix) or topic[len(prefix)] != "/":
        return None
    device = topic[len(prefix) + 1 :]
    if "/" in device:
        return None
    return device


class Validator:
    def __init__(self, topic_prefix: str = "iot/telemetry", max_payload: int = 4096) -> None:
        self.prefix = topic_prefix
        self.max_payload = max_payload

    def validate(self, topic: Optional[str], payload: bytes) -> Union[Telemetry, str]:
        """Return a Telemetry, or the name of the first problem (one of REASONS)."""
        try:
            return self._validate(topic, payload)
        except Invalid as exc:
            return exc.reason
        except Exception:  # last line of defence: the hot path must survive
            return "bad_type"

    def _validate(self, topic: Optional[str], payload: bytes) -> Union[Telemetry, str]:
        topic_id = device_from_topic(topic, self.prefix) if isinstance(topic, str) else None
        if topic_id is None:
            return "bad_topic"
        if len(payload) > self.max_payload:
            return "oversize"
        try:
            text = payload.decode("utf-8")
        except (UnicodeDecodeError, AttributeError):
            return "not_utf8"
        try:
            # RecursionError: deeply nested arrays; ValueError: also >4300-digit integers.
            message = _loads(text)
        except (ValueError, RecursionError):
            return "not_json"
        if type(message) is not dict:
            return "not_object"

        try:
            device_id = message["device_id"]
            device_name = message["device_name"]
            ts = message["ts"]
            seq = message["seq"]
            data = message["data"]
        except KeyError:
            return "missing_field"
        if type(device_id) is not str or type(device_name) is not str:
            return "bad_type"
        if device_id != topic_id:
            return "id_mismatch"
        ts = _number(ts)
        if type(seq) is not int or seq < 0:
            return "bad_type"
        if type(data) is not dict:
            return "bad_type"
        for name in NUMERIC_FIELDS:
            if name not in data:
                return "missing_field"
            _number(data[name])
        for name in BOOL_FIELDS:
            if name not in data:
                return "missing_field"
            if type(data[name]) is not bool:
                return "bad_type"

        source = message.get("source")
        if source is not None and type(source) is not dict:
            return "bad_type"
        stats = message.get("stats")
        if stats is not None:
            if type(stats) is not dict:
                return "bad_type"
            for name in STATS_FIELDS:
                value = stats.get(name, 0)
                if type(value) is not int or value < 0:
                    return "bad_type"
        return Telemetry(device_id, device_name, ts, seq, data, stats, message)
