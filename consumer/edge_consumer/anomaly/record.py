"""The Anomaly record, as the engine returns it and as it is published (JSON)."""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

KINDS = ("spike", "stuck", "drift", "dropout", "impossible", "multivariate")
DEVICE = "*"  # the `sensor` of device-level anomalies (dropout, multivariate)


class Anomaly(NamedTuple):
    device_id: str
    sensor: str  # a data field, several of one chip joined by "," (same onset), or DEVICE
    kind: str  # one of KINDS
    seq: int  # the anomalous reading (dropout: the last one before the silence)
    ts: float  # its timestamp (a dropout found by tick(): the tick's `now`)
    value: float  # the reading's value (dropout: seconds silent)
    score: float  # how far past normal: robust z, run length / threshold, drift / scale...
    detail: str  # one line for people

    def to_dict(self) -> dict[str, Any]:
        out = self._asdict()
        for key in ("value", "score"):  # JSON has no NaN or infinity
            if not math.isfinite(out[key]):
                out[key] = None
        return out

    def to_json(self) -> str:
        """Compact JSON for `iot/anomaly/<device_id>` (edge_agent.protocol.anomaly_topic)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))
