"""Optional multivariate detector: river's HalfSpaceTrees over a device's scaled readings.

Only when `river` is importable (the `anomaly` extra); everything else works without it.
Features are the numeric readings (gas in log space), min-max scaled online by river itself,
so that a combination of values the device has not shown lately scores high even when each
value alone is ordinary. One model per device: n_trees x 2^(height+1) nodes, constant in
time. It is slow (tens of microseconds per reading) and its score is not a physical
quantity, so it is off by default: EngineConfig(multivariate=True).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any


def available() -> bool:
    return importlib.util.find_spec("river") is not None


class HalfSpace:
    __slots__ = ("_model", "_seen", "active", "fired", "release", "score", "threshold", "warmup")

    def __init__(
        self,
        seed: int,
        threshold: float = 0.995,
        trees: int = 10,
        height: int = 8,
        window: int = 250,
    ) -> None:
        anomaly: Any = importlib.import_module("river.anomaly")
        self._model: Any = anomaly.HalfSpaceTrees(
            n_trees=trees, height=height, window_size=window, seed=seed
        )
        self.threshold = threshold
        self.release = threshold - 0.05
        self.warmup = 2 * window  # the trees' mass profiles need a full reference window
        self._seen = 0
        self.score = 0.0
        self.active = False
        self.fired = False

    def update(self, features: dict[str, float]) -> None:
        self.fired = False
        self.score = score = float(self._model.score_one(features))
        self._model.learn_one(features)
        self._seen += 1
        if self._seen <= self.warmup:
            return
        if not self.active and score > self.threshold:
            self.active = self.fired = True
        elif self.active and score < self.release:
            self.active = False
