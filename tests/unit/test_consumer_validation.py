"""Every invalid reason, and the edges of the valid payload."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from edge_consumer.validation import REASONS, Telemetry, Validator

DEV = "02:42:ac:11:00:01"
TOPIC = f"iot/telemetry/{DEV}"
GOOD: dict[str, Any] = {
    "device_id": DEV,
    "device_name": "pi-0001",
    "ts": 1700000000.5,
    "seq": 7,
    "epoch": 123456789,
    "data": {
        "temp": 21.5,
        "humidity": 50,
        "co": 0.1,
        "lpg": 0.2,
        "smoke": 0.3,
        "light": True,
        "motion": False,
    },
    "source": {"device": "b8:27:eb:bf:9d:51", "ts": 1594512094.38},
    "stats": {"overflow": 0, "reconnects": 1, "skipped_rows": 0},
}


def with_(path: str, value: Any) -> bytes:
    msg = copy.deepcopy(GOOD)
    *parents, leaf = path.split(".")
    node = msg
    for p in parents:
        node = node[p]
    node[leaf] = value
    return json.dumps(msg).encode()


def without(path: str) -> bytes:
    msg = copy.deepcopy(GOOD)
    *parents, leaf = path.split(".")
    node = msg
    for p in parents:
        node = node[p]
    del node[leaf]
    return json.dumps(msg).encode()


V = Validator("iot/telemetry", max_payload=4096)


def test_good_payload_is_telemetry() -> None:
    t = V.validate(TOPIC, json.dumps(GOOD).encode())
    assert isinstance(t, Telemetry)
    assert (t.device_id, t.seq, t.ts, t.stats) == (DEV, 7, 1700000000.5, GOOD["stats"])
    assert t.epoch == 123456789


def test_unknown_fields_ints_for_floats_and_missing_optional_parts_are_fine() -> None:
    assert isinstance(V.validate(TOPIC, with_("extra", [1, 2])), Telemetry)
    assert isinstance(V.validate(TOPIC, with_("ts", 1700000000)), Telemetry)
    assert isinstance(V.validate(TOPIC, without("stats")), Telemetry)
    assert isinstance(V.validate(TOPIC, without("source")), Telemetry)
    assert isinstance(V.validate(TOPIC, with_("seq", 0)), Telemetry)
    old_agent = V.validate(TOPIC, without("epoch"))  # agents from before epochs
    assert isinstance(old_agent, Telemetry) and old_agent.epoch is None
    assert V.validate(TOPIC, with_("epoch", None)).epoch is None  # type: ignore[union-attr]


CASES = [
    (TOPIC, b"\xff\xfe{}", "not_utf8"),
    (TOPIC, json.dumps(GOOD).encode("utf-16"), "not_utf8"),
    (TOPIC, b"", "not_json"),
    (TOPIC, b"{", "not_json"),
    (TOPIC, b'{"a": 1} trailing', "not_json"),
    (TOPIC, b"[" * 2000 + b"]" * 2000, "not_json"),  # RecursionError inside json
    (TOPIC, b"[1, 2]", "not_object"),
    (TOPIC, b"42", "not_object"),
    (TOPIC, b"null", "not_object"),
    (TOPIC, without("seq"), "missing_field"),
    (TOPIC, without("device_name"), "missing_field"),
    (TOPIC, without("data.motion"), "missing_field"),
    (TOPIC, without("data.temp"), "missing_field"),
    (TOPIC, with_("device_name", "pi\u00000001"), "bad_type"),  # no database holds a NUL
    (TOPIC, with_("seq", True), "bad_type"),
    (TOPIC, with_("seq", -1), "bad_type"),
    (TOPIC, with_("seq", 1.0), "bad_type"),
    (TOPIC, with_("seq", "1"), "bad_type"),
    (TOPIC, with_("data.temp", True), "bad_type"),
    (TOPIC, with_("data.temp", "21.5"), "bad_type"),
    (TOPIC, with_("data.light", 1), "bad_type"),
    (TOPIC, with_("data", [1]), "bad_type"),
    (TOPIC, with_("ts", None), "bad_type"),
    (TOPIC, with_("device_name", 5), "bad_type"),
    (TOPIC, with_("stats", 3), "bad_type"),
    (TOPIC, with_("stats.overflow", -1), "bad_type"),
    (TOPIC, with_("stats.reconnects", False), "bad_type"),
    (TOPIC, with_("source", "x"), "bad_type"),
    (TOPIC, with_("epoch", "1"), "bad_type"),
    (TOPIC, with_("epoch", -1), "bad_type"),
    (TOPIC, with_("epoch", 1.0), "bad_type"),
    (TOPIC, with_("epoch", True), "bad_type"),
    (TOPIC, with_("data.humidity", float("nan")), "non_finite"),
    (TOPIC, with_("ts", float("inf")), "non_finite"),
    (TOPIC, with_("data.co", 10**400), "non_finite"),
    (TOPIC, with_("data.co", 1e308).replace(b"1e+308", b"1e999"), "non_finite"),
    (TOPIC, with_("device_id", "02:42:ac:11:00:02"), "id_mismatch"),
    (TOPIC, with_("pad", "x" * 5000), "oversize"),
    ("iot/telemetry", json.dumps(GOOD).encode(), "bad_topic"),
    ("iot/telemetry/", json.dumps(GOOD).encode(), "bad_topic"),
    (f"{TOPIC}/extra", json.dumps(GOOD).encode(), "bad_topic"),
    (f"other/{DEV}", json.dumps(GOOD).encode(), "bad_topic"),
    (f"iot/telemetryX/{DEV}", json.dumps(GOOD).encode(), "bad_topic"),
    (None, json.dumps(GOOD).encode(), "bad_topic"),
    # An ID that differs from its topic only in letter case is another device's.
    (TOPIC, json.dumps({**GOOD, "device_id": DEV.upper()}).encode(), "id_mismatch"),
]


@pytest.mark.parametrize(("topic", "payload", "reason"), CASES)
def test_invalid_reasons(topic: str, payload: bytes, reason: str) -> None:
    assert reason in REASONS
    assert V.validate(topic, payload) == reason


def test_every_reason_is_reachable() -> None:
    assert {reason for _, _, reason in CASES} == set(REASONS)


def test_oversize_is_checked_before_parsing() -> None:
    assert Validator(max_payload=10).validate(TOPIC, b"\xff" * 11) == "oversize"
    assert Validator(max_payload=10).validate(TOPIC, b"\xff" * 10) == "not_utf8"


def test_custom_prefix() -> None:
    v = Validator("site/a/tele")
    assert isinstance(v.validate(f"site/a/tele/{DEV}", json.dumps(GOOD).encode()), Telemetry)
    assert v.validate(TOPIC, json.dumps(GOOD).encode()) == "bad_topic"
