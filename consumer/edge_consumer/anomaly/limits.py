"""Impossible values: readings no working sensor of this kind reports.

The dataset has real glitches (../shared/dataset.md): temp exactly 0.0 together with humidity
near 1 (1.1-3.1 %RH), a DHT-class sensor's failed read. Indoors in July neither is physical.
Ranges are the plausible ones for these boards: temp -40..80 °C (the DHT22's range), humidity
5..100 %RH (below 5 % is the failed-read signature, above 100 is meaningless), gas readings
strictly positive (they are ratios of a resistance; the model takes their logarithm) and
below 1 (100 %). temp 0.0 is only impossible with such a humidity: a real 0.0 °C exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RANGES: dict[str, tuple[float, float]] = {
    "temp": (-40.0, 80.0),
    "humidity": (5.0, 100.0),
    "co": (0.0, 1.0),
    "lpg": (0.0, 1.0),
    "smoke": (0.0, 1.0),
}
OPEN_LOW = frozenset(("co", "lpg", "smoke"))  # 0 itself is impossible
FAILED_READ_HUMIDITY = 5.0


def impossible(data: Mapping[str, Any], sensors: tuple[str, ...]) -> dict[str, str]:
    """The sensors of one reading whose values are impossible, each with why."""
    out: dict[str, str] = {}
    for s in sensors:
        bounds = RANGES.get(s)
        if bounds is None:
            continue
        v = data[s]
        lo, hi = bounds
        if v > hi or v < lo or (v == lo and s in OPEN_LOW):
            out[s] = f"{s} {v:g} outside {lo:g}..{hi:g}"
    if data.get("temp") == 0.0 and "temp" in sensors:
        humidity = data.get("humidity")
        if isinstance(humidity, (int, float)) and humidity < FAILED_READ_HUMIDITY:
            out["temp"] = f"temp 0.0 with humidity {humidity:g}: a failed sensor read"
    return out
