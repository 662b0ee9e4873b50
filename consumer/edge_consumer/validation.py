"""Telemetry validation: bytes in, a Telemetry or an invalid-reason name out; never raises.

Checks run cheapest first (topic, size, UTF-8, JSON) and the first problem found is the
reason. The fields are edge_agent.protocol's. Unknown top-level fields are allowed; `epoch`,
`source` and `stats` are optional, but when present `epoch` must be an integer >= 0, the
other two objects (and stats counters non-negative integers).
"""

from __future__ import annotations

import json
import json.scanner
import math
from typing import Any, NamedTuple, Optional, Union, cast

from edge_agent.protocol import (
    BOOL_FIELDS,
    NUMERIC_FIELDS,
    STATS_FIELDS,
    TELEMETRY_PREFIX,
    device_from_topic,
)

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

_isfinite = math.isfinite
_loads = json.loads
# The C scanner behind json.loads, called directly: skips two Python-level wrappers per
# message on the hot path. Same grammar (NaN/Infinity included), same results.
_scan = json.scanner.make_scanner(cast(Any, json.JSONDecoder()))  # typeshed: odd signature
_JSON_SPACE = " \t\n\r"
_MISSING = object()


class Telemetry(NamedTuple):
    device_id: str
    device_name: str
    ts: float
    seq: int
    data: dict[str, Any]  # validated: NUMERIC_FIELDS are finite numbers, BOOL_FIELDS bools
    stats: Optional[dict[str, Any]]  # validated counters, or None when absent
    message: dict[str, Any]  # the whole decoded payload, for JSON output
    epoch: Optional[int] = None  # None: an agent from before epochs


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


class Validator:
    def __init__(self, topic_prefix: str = TELEMETRY_PREFIX, max_payload: int = 4096) -> None:
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
            # RecursionError: deeply nested arrays; ValueError: also >4300-digit integers;
            # StopIteration: the scanner found no value where one must be.
            if text[:1] in _JSON_SPACE:  # includes the empty payload
                message = _loads(text)
            else:
                message, end = _scan(text, 0)
                if end != len(text) and text[end:].strip(_JSON_SPACE):
                    return "not_json"
        except (ValueError, RecursionError, StopIteration):
            return "not_json"
        if type(message) is not dict:
            return "not_object"

        try:  # protocol.FIELDS, unpacked by hand: this is the hot path
            device_id = message["device_id"]
            device_name = message["device_name"]
            ts = message["ts"]
            seq = message["seq"]
            data = message["data"]
        except KeyError:
            return "missing_field"
        if type(device_id) is not str or type(device_name) is not str:
            return "bad_type"
        if "\x00" in device_name:  # no text column of PostgreSQL can hold it
            return "bad_type"
        if device_id != topic_id:
            return "id_mismatch"
        ts = _number(ts)
        if type(seq) is not int or seq < 0:
            return "bad_type"
        if type(data) is not dict:
            return "bad_type"
        for name in NUMERIC_FIELDS:
            value = data.get(name, _MISSING)
            if type(value) is not float or not _isfinite(value):
                if value is _MISSING:
                    return "missing_field"
                _number(value)  # raises for the wrong type or non-finite; ints pass
        for name in BOOL_FIELDS:
            value = data.get(name, _MISSING)
            if type(value) is not bool:
                return "missing_field" if value is _MISSING else "bad_type"

        epoch = message.get("epoch")
        if epoch is not None and (type(epoch) is not int or epoch < 0):
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
        return Telemetry(device_id, device_name, ts, seq, data, stats, message, epoch)
