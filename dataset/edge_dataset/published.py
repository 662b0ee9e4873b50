"""The published figures of the real dataset, in one place.

Kaggle garystafford/environmental-sensor-data-132k (CC0), as its page describes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.protocol import COLUMNS, SOURCE_MACS

# The columns, the sensors' MACs and the device-to-sensor rule are edge_agent.protocol's.
HEADER_LINE = ",".join(f'"{c}"' for c in COLUMNS).encode() + b"\n"

ROWS = 405_184
UNIQUE_ROWS = 405_171
DUPLICATES = ROWS - UNIQUE_ROWS
FIRST_READING = "2020-07-12T00:01:34.386Z"
LAST_READING = "2020-07-20T00:03:37.264Z"
SHA256 = "811ffbf210c8c454f328b95f7e8affc0ce031fdee927a8dfb76035b7e3334287"
# Over the whole file: co, lpg and smoke come from one gas sensor.
CO_RANGE = (0.001171, 0.014420)
LPG_RANGE = (0.002693, 0.016567)
SMOKE_RANGE = (0.006692, 0.046590)
LIGHT_FRACTION = 0.28
MOTION_FRACTION = 0.01


@dataclass(frozen=True)
class Sensor:
    mac: str
    rows: int
    mean_gap_s: float
    temp: tuple[float, float, float]  # min, max, mean
    humidity: tuple[float, float, float]
    co: tuple[float, float]  # min, max


SENSORS: tuple[Sensor, ...] = (
    Sensor(
        "b8:27:eb:bf:9d:51",
        187_451,
        3.7,
        (21.0, 24.1, 22.28),
        (45.1, 63.3, 50.8),
        (0.004646, 0.007955),
    ),
    Sensor(
        "00:0f:00:70:91:0a",
        111_815,
        6.2,
        (0.0, 20.2, 19.36),
        (1.1, 99.9, 75.4),
        (0.001171, 0.014420),
    ),
    Sensor(
        "1c:bf:ce:15:ec:4d",
        105_918,
        6.5,
        (0.0, 30.6, 26.03),
        (1.6, 92.0, 61.9),
        (0.003391, 0.006224),
    ),
)
MACS = tuple(s.mac for s in SENSORS)
if tuple(sorted(MACS)) != SOURCE_MACS:  # pragma: no cover - a broken edit of either list
    raise ImportError("edge_dataset.published.SENSORS and edge_agent.protocol.SOURCE_MACS differ")
