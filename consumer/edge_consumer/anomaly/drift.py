"""Drift: a sensor slowly leaving its own baseline.

Two EWMAs of the reading (spike-cleaned; gas in log space): a fast one (span FAST readings,
~1.5 min at 5 s) and a slow baseline (span SLOW, ~40 min). Their difference d is what has
changed lately; its usual size, the scale, is the running mean of |d| (span SCALE, clipped at
3x itself so that a drift under way barely inflates it). An alarm is raised when
|d| > threshold x scale (never below the sensor's resolution) and stays on, once, while the
sensor is away: the baseline is frozen meanwhile, so the drift is not learned as normal. It
ends when d falls under release x scale or changes sign (the sensor came back, or the slow
baseline had absorbed part of the drift before the alarm: the baseline restarts from the
fast EWMA then, so that a return is not a second, opposite drift), or after `max_active`
readings (a permanent change: accepted as the new baseline).

Natural change is what limits this: on the replica, |d| / scale stays under 5-7 on 99.99% of
readings (8.7 at most, one board), so the threshold is 7. A drift smaller than that many
times the sensor's usual change over ~100 readings cannot be told from the weather from one
sensor's own history.
"""

from __future__ import annotations


class DriftDetector:
    __slots__ = (
        "_a_fast",
        "_a_scale",
        "_a_slow",
        "_n",
        "active",
        "d",
        "fast",
        "fired",
        "floor",
        "max_active",
        "release",
        "scale",
        "since",
        "slow",
        "threshold",
        "up",
        "warmup",
    )

    def __init__(
        self,
        fast: int = 20,
        slow: int = 500,
        scale: int = 1000,
        threshold: float = 7.0,
        release: float = 2.0,
        warmup: int = 250,
        max_active: int = 2000,
    ) -> None:
        self._a_fast = 2.0 / (fast + 1)
        self._a_slow = 2.0 / (slow + 1)
        self._a_scale = 1.0 / scale
        self.threshold = threshold
        self.release = release
        self.warmup = warmup
        self.max_active = max_active
        self.floor = 0.0  # the resolution at the last alarm (for its score)
        self._n = 0
        self.fast = 0.0
        self.slow = 0.0
        self.scale = 0.0
        self.d = 0.0
        self.active = False
        self.up = True
        self.since = 0
        self.fired = False

    def update(self, x: float, floor: float) -> None:
        """One reading (spike-cleaned); floor: the sensor's resolution, the least scale."""
        self.fired = False
        n = self._n = self._n + 1
        if n == 1:
            self.fast = self.slow = x
            return
        fast = self.fast = self.fast + self._a_fast * (x - self.fast)
        if self.active:
            self._follow(fast, n)
            return
        slow = self.slow = self.slow + self._a_slow * (x - self.slow)
        d = self.d = fast - slow
        a = d if d >= 0.0 else -d
        scale = self.scale
        # a running mean at first, then exponential; clipped once it means something
        w = self._a_scale if n * self._a_scale > 1.0 else 1.0 / n
        clip = 3.0 * scale
        self.scale = scale + w * ((a if a < clip or n < 50 else clip) - scale)
        if n > self.warmup:
            if scale < floor:
                scale = floor
            if a > self.threshold * scale:
                self.active = self.fired = True
                self.up = d > 0.0
                self.since = n
                self.floor = floor

    def _follow(self, fast: float, n: int) -> None:
        d = self.d = fast - self.slow
        if (
            (d > 0.0) != self.up
            or abs(d) < self.release * self.scale
            or n - self.since > self.max_active
        ):
            self.active = False
            self.slow = fast
