"""Streaming anomaly detection on the fleet's telemetry (see engine.py for the API).

Detectors, each in its own module, per device and sensor, in constant memory: spike (robust
z-score), stuck (runs of one value), drift (EWMA against the device's baseline), limits
(impossible values), silence (dropouts, on a clock) and, with river installed, multivariate
(HalfSpaceTrees). `edge-anomaly score FILE.csv` runs them offline (cli.py).
"""

from __future__ import annotations

from .engine import AnomalyEngine, EngineConfig
from .record import DEVICE, KINDS, Anomaly

__all__ = ["DEVICE", "KINDS", "Anomaly", "AnomalyEngine", "EngineConfig"]
