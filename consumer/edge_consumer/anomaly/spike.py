"""Spikes: a short excursion far outside the sensor's recent behaviour that then comes back.

Robust z-score: z = |x - level| / scale, where level is the median of the last LEVEL readings
and scale is 1.4826 x the median absolute step |x[i] - x[i-1]| over the last WINDOW readings
(the MAD of the steps: the spread of what one reading normally adds). The steps' MAD rather
than the values' one: on a trending window the values' MAD is small against the trend itself
and the readings at its edge look like outliers (on the replica the values' MAD gave natural
z above 20, the steps' MAD stays under 17). The scale never drops below the sensor's
resolution (its smallest step seen, 0.1 for temp and humidity): a flat temperature has a
step MAD of 0.

A reading with z > threshold opens an excursion; it is a spike when, within `hold` more
readings, a reading comes back near the level it left (z < back x threshold, same level and
scale). The alarm is raised then (delay = the spike's length, 1-3 readings) with the seq of
its first reading, once per excursion. Waiting for the return is what separates a glitch from
a level change, and it is what keeps false alarms down: on the replica, reverting excursions
are about ten times rarer than excursions. An excursion that does not come back is a level
shift: the level restarts from the new readings and nothing is reported here (the stuck and
drift detectors look at persistent changes). During an excursion the value passed on to the
drift detector is the old level, so that a glitch never moves a baseline.
"""

from __future__ import annotations

from collections import deque
from typing import Optional

from .recur import Recurrence

MAD_NORMAL = 1.4826  # MAD -> standard deviation for normal noise
REFRESH = 8  # readings between scale updates: one reading moves the steps' median little


class SpikeDetector:
    __slots__ = (
        "_diffs",
        "_last",
        "_limit",
        "_mid",
        "_n",
        "_recent",
        "_recur",
        "_refresh",
        "_scale",
        "back",
        "fired",
        "first_seq",
        "first_ts",
        "hold",
        "level",
        "n_open",
        "peak",
        "peak_z",
        "scale",
        "step",
        "threshold",
        "warmup",
    )

    def __init__(
        self,
        window: int = 32,
        level: int = 5,
        threshold: float = 10.0,
        back: float = 0.5,
        hold: int = 3,
        warmup: int = 16,
    ) -> None:
        self._recent: deque[float] = deque(maxlen=level)
        self._mid = level // 2
        self._diffs: deque[float] = deque(maxlen=window)
        self._last: Optional[float] = None
        self._refresh = 0  # readings until the scale is recomputed
        self._scale = 0.0  # the current scale (0: not enough readings yet)
        self._limit = float("inf")  # threshold x scale
        self.step = float("inf")  # smallest non-zero step seen: the resolution
        self.threshold = threshold
        self.back = back
        self.hold = hold
        self.warmup = max(warmup, 2)
        self.fired = False  # the last update() confirmed a spike (fields below describe it)
        self.n_open = 0  # readings in the open excursion, 0: none
        self.level = 0.0  # the open excursion's level and scale
        self.scale = 1.0
        self.first_seq = 0
        self.first_ts = 0.0
        self.peak = 0.0  # the excursion's farthest value (as observed) and its z
        self.peak_z = 0.0
        self._n = 0  # readings seen
        self._recur = Recurrence()

    def _rescale(self) -> None:
        self._refresh = REFRESH
        diffs = self._diffs
        if len(diffs) < self.warmup or len(self._recent) < self._mid * 2 + 1:
            self._scale, self._limit = 0.0, float("inf")
            return
        scale = MAD_NORMAL * sorted(diffs)[len(diffs) // 2]
        if scale < self.step:
            scale = self.step
        self._scale, self._limit = scale, self.threshold * scale

    def _feed(self, x: float) -> None:
        last = self._last
        if last is not None:
            d = x - last
            if d < 0.0:
                d = -d
            # a float32 and a float64 spelling of one value differ by rounding noise
            if d < self.step and d > 1e-6 * (abs(x) + 1.0):
                self.step = d
            self._diffs.append(d)
        self._last = x
        self._recent.append(x)
        self._refresh -= 1
        if self._refresh <= 0:
            self._rescale()

    def update(self, x: float, seq: int, ts: float, raw: float) -> float:
        """Feed one reading (x: the detector's scale, raw: as reported); returns the value
        to pass on (the old level while an excursion is open). Sets `fired`."""
        self.fired = False
        self._n += 1
        if self.n_open:
            return self._open(x, raw)
        level = sorted(self._recent)[self._mid] if self._scale else x
        dev = x - level
        if dev < 0.0:
            dev = -dev
        if dev > self._limit:
            self._rescale()  # decide on an exact scale
            if dev > self._limit:
                self.n_open = 1
                self.level, self.scale = level, self._scale
                self.first_seq, self.first_ts = seq, ts
                self.peak, self.peak_z = raw, dev / self._scale
                return level
        self._feed(x)
        return x

    def _open(self, x: float, raw: float) -> float:
        dev = abs(x - self.level)
        if dev < self.back * self.threshold * self.scale:
            self.fired = self._news()  # it came back: the excursion was a spike
            self.n_open = 0
            self._feed(x)
            return x
        z = dev / self.scale
        if z > self.peak_z:
            self.peak, self.peak_z = raw, z
        self.n_open += 1
        if self.n_open <= self.hold:
            return self.level
        self.n_open = 0  # it stays: a level shift, not a spike; follow the new level
        self.restart()
        self._feed(x)
        return x

    def _news(self) -> bool:
        """A spike confirmed: whether it is news against the recent ones."""
        z = self.peak_z
        news = z > self._recur.bar(self._n)
        self._recur.note(self._n, z)
        return news

    @property
    def last(self) -> float:
        """The last reading fed on (an excursion's readings are not): 0.0 before any."""
        return self._last if self._last is not None else 0.0

    def restart(self) -> None:
        """Forget the recent readings (after a stuck episode: they are not the sensor's)."""
        self._recent.clear()
        self._last = None
        self.n_open = 0
        self._scale, self._limit, self._refresh = 0.0, float("inf"), 0
