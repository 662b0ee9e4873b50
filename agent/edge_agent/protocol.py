"""The wire protocol and the dataset facts, in one place (standard library only, cheap to import).

Everything that the agent, the consumer, the dataset slicer and the inventory plugin must agree
on lives here: the topic layout, the payload's fields and their types, the slice CSV's columns,
the published dataset's sensor MACs and which device replays which of them, the MAC format.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Optional

# --- topics: <prefix>/<device_id> -----------------------------------------------------------

TELEMETRY_PREFIX = "iot/telemetry"  # JSON readings, QoS 1
STATUS_PREFIX = "iot/status"  # "online" / "offline", retained (the agent's will says offline)
# Mosquitto's own figures (clients, messages, load, heap), which the monitor reads.
BROKER_STATS_TOPIC = "$SYS/broker/#"
STATUS_ONLINE = "online"
STATUS_OFFLINE = "offline"
ANOMALY_PREFIX = "iot/anomaly"  # the consumer's anomaly records (edge_consumer.anomaly), JSON


def telemetry_topic(device_id: str, prefix: str = TELEMETRY_PREFIX) -> str:
    return f"{prefix}/{device_id}"


def status_topic(device_id: str, prefix: str = STATUS_PREFIX) -> str:
    return f"{prefix}/{device_id}"


def anomaly_topic(device_id: str, prefix: str = ANOMALY_PREFIX) -> str:
    return f"{prefix}/{device_id}"


def device_from_topic(topic: str, prefix: str) -> Optional[str]:
    """The device ID of '<prefix>/<id>' (exactly one non-empty level), else None."""
    if len(topic) <= len(prefix) + 1 or not topic.startswith(prefix) or topic[len(prefix)] != "/":
        return None
    device = topic[len(prefix) + 1 :]
    if "/" in device:
        return None
    return device


# --- telemetry payload: one JSON object ---------------------------------------------------------

# Required top-level fields: device_id (str, equal to the topic's ID), device_name (str),
# ts (finite number, publish time, Unix seconds), seq (int >= 0), data (object, DATA_FIELDS).
FIELDS = ("device_id", "device_name", "ts", "seq", "data")
# Optional: epoch (int >= 0, new when the agent starts without state: its seqs restart at 0),
# source (object: SOURCE_FIELDS), stats (object: STATS_FIELDS, ints >= 0).
OPTIONAL_FIELDS = ("epoch", "source", "stats")
NUMERIC_FIELDS = ("temp", "humidity", "co", "lpg", "smoke")  # finite numbers
BOOL_FIELDS = ("light", "motion")  # true / false
DATA_FIELDS = NUMERIC_FIELDS + BOOL_FIELDS
SOURCE_FIELDS = ("device", "ts")  # the dataset row replayed: sensor MAC and its timestamp
STATS_FIELDS = ("overflow", "reconnects", "skipped_rows")  # the agent's own counters
EPOCH_BITS = 48  # epochs are random and stay exact as JSON numbers (doubles: 53 bits)


def telemetry(
    device_id: str,
    device_name: str,
    ts: float,
    seq: int,
    data: dict[str, Any],
    source: Optional[dict[str, Any]] = None,
    stats: Optional[dict[str, Any]] = None,
    epoch: Optional[int] = None,
) -> bytes:
    """One telemetry payload, compact JSON (fields in FIELDS then OPTIONAL_FIELDS order)."""
    message: dict[str, Any] = {
        "device_id": device_id,
        "device_name": device_name,
        "ts": ts,
        "seq": seq,
        "data": data,
    }
    if epoch is not None:
        message["epoch"] = epoch
    if source is not None:
        message["source"] = source
    if stats is not None:
        message["stats"] = stats
    return json.dumps(message, separators=(",", ":")).encode()


# --- dataset: the published CSV format ------------------------------------------------------------

COLUMNS = ("ts", "device", "co", "humidity", "light", "lpg", "motion", "smoke", "temp")
FLOAT_COLUMNS = ("ts", "co", "humidity", "lpg", "smoke", "temp")
BOOL_COLUMNS = ("light", "motion")

# The published dataset's sensor MACs, sorted (edge_dataset.published has their figures).
SOURCE_MACS = ("00:0f:00:70:91:0a", "1c:bf:ce:15:ec:4d", "b8:27:eb:bf:9d:51")


def source_index(number: int, sources: int = len(SOURCE_MACS)) -> int:
    """Device `number` (1-based) replays sorted source MAC number (n - 1) % k (0-based)."""
    return (number - 1) % sources


def source_mac(number: int, macs: Sequence[str] = SOURCE_MACS) -> str:
    """The sensor device `number` (1-based) replays: SOURCE_MACS[(number - 1) % 3]."""
    return macs[source_index(number, len(macs))]


# --- device IDs -----------------------------------------------------------------------------------

OCTET = "[0-9a-f]{2}"
MAC_PATTERN = f"{OCTET}(?::{OCTET}){{5}}"  # lower case, colons: what devices report
MAC_RE = re.compile(f"^{MAC_PATTERN}$")
