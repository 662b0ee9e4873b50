"""Property test: validation + accounting never raise and count every bad payload once.

10,000 generated (topic, payload) pairs: random bytes, arbitrary JSON, valid telemetry with
one field replaced by any JSON value (wrong types, huge ints, NaN/Infinity, bools), missing
keys, oversize padding and topic/ID mismatches.
"""

from __future__ import annotations

import json
import math
from typing import Any

from edge_consumer.accounting import Accounting
from edge_consumer.validation import REASONS, Telemetry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PREFIX = "iot/telemetry"
MAX_PAYLOAD = 1024
# Six random bytes rather than from_regex: an order of magnitude cheaper to generate.
macs = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**320)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=6,
)


def telemetry(device_id: str, seq: int) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "device_name": "pi-0001",
        "ts": 1700000000.25,
        "seq": seq,
        "data": {
            "temp": 21.5,
            "humidity": 50.0,
            "co": 0.1,
            "lpg": 0.2,
            "smoke": 0.3,
            "light": True,
            "motion": False,
        },
        "stats": {"overflow": 0, "reconnects": 0, "skipped_rows": 0},
    }


FIELDS = ["device_id", "device_name", "ts", "seq", "data", "stats", "source"]
FIELDS += [f"data.{k}" for k in ("temp", "humidity", "co", "lpg", "smoke", "light", "motion")]
FIELDS += [f"stats.{k}" for k in ("overflow", "reconnects", "skipped_rows")]


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # allow_nan: emits NaN/Infinity like a broken agent


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, bytes, str]:
    """(topic, payload, expectation): expectation is a reason, 'valid' or 'any'."""
    device = draw(macs)
    topic = f"{PREFIX}/{device}"
    kind = draw(
        st.sampled_from(
            ["bytes", "json", "mutate", "remove", "oversize", "mismatch", "topic", "valid"]
        )
    )
    msg = telemetry(device, draw(st.integers(min_value=0, max_value=2**70)))
    if kind == "bytes":
        return topic, draw(st.binary(max_size=200)), "any"
    if kind == "json":
        return topic, dumps(draw(json_values)), "any"
    if kind in ("mutate", "remove"):
        path = draw(st.sampled_from(FIELDS))
        parent, _, leaf = path.rpartition(".")
        node = msg[parent] if parent else msg
        if kind == "remove":
            node.pop(leaf, None)
        else:
            node[leaf] = draw(json_values)
        return topic, dumps(msg), "any"
    if kind == "oversize":
        msg["pad"] = "x" * MAX_PAYLOAD
        return topic, dumps(msg), "oversize"
    if kind == "mismatch":
        other = draw(macs)
        return f"{PREFIX}/{other}", dumps(msg), "valid" if other == device else "id_mismatch"
    if kind == "topic":
        bad = draw(
            st.sampled_from(
                [PREFIX, f"{PREFIX}/", f"{topic}/x", f"other/{device}", f"{PREFIX}x/{device}"]
            )
        )
        return bad, dumps(msg), "bad_topic"
    return topic, dumps(msg), "valid"


def well_formed(t: Telemetry) -> bool:
    numbers = [t.ts] + [t.data[k] for k in ("temp", "humidity", "co", "lpg", "smoke")]
    return (
        type(t.seq) is int
        and t.seq >= 0
        and all(type(x) in (int, float) and math.isfinite(x) for x in numbers)
        and all(type(t.data[k]) is bool for k in ("light", "motion"))
    )


BATCH = 10  # payloads per example: 1,000 examples x 10 = 10,000 payloads, a third of the time


@settings(
    max_examples=1_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(cases(), min_size=BATCH, max_size=BATCH))
def test_never_raises_and_counts_every_bad_payload(batch: list[tuple[str, bytes, str]]) -> None:
    for topic, payload, expected in batch:
        check_one(topic, payload, expected)


def check_one(topic: str, payload: bytes, expected: str) -> None:
    acc = Accounting(PREFIX, "iot/status", MAX_PAYLOAD)
    result = acc.handle(topic, payload, 1700000001.0)
    assert acc.received == 1
    if isinstance(result, Telemetry):
        assert expected in ("valid", "any")
        assert well_formed(result)
        assert acc.valid == 1 and acc.invalid_total == 0
        dev = acc.devices[result.device_id]
        assert dev.valid == 1 and dev.seqs.distinct == 1 and dev.gaps == 0
    else:
        assert result in REASONS
        assert expected in (result, "any"), (expected, result)
        assert acc.valid == 0 and acc.invalid == {r: int(r == result) for r in REASONS}
    # A second copy is a duplicate (valid) or counted again under the same reason.
    again = acc.handle(topic, payload, 1700000002.0)
    assert type(again) is type(result)
    if isinstance(result, Telemetry):
        assert acc.devices[result.device_id].duplicates == 1
    else:
        assert again == result and acc.invalid[result] == 2
