"""Stuck: the same value, exactly, for far longer than this sensor's runs normally last.

How long a value normally repeats depends on the sensor and on the room: a continuous gas
reading never repeats, a 0.1 °C temperature in a still room holds for dozens of readings. So
the normal run is learned online per device and sensor, two ways, and the larger wins:
- p, the share of readings equal to the one before (a running mean, then an EWMA over ~1000
  readings). If each reading repeated the last with probability p independently, a run of r
  would have probability p^(r-1): the run is stuck at 1 + ln(ALPHA) / ln(p) (ALPHA = 1e-5
  per reading). Learned within ~100 readings. On the replica this is 3 for gas, 5-8 for
  humidity, 10-45 for temperature.
- smooth signals repeat in longer runs than that (a temperature at its daily turn): 1.5x the
  longest run that ended without an alarm, forgetting slowly (x DECAY per completed run, a
  half-life of ~700 runs) so that one unusual afternoon does not blind the detector for ever.
At least `min_run` (3) readings: a value seen twice in a row is never news. Nothing is
reported in the first `warmup` readings. One alarm per run: it is re-armed when the value
changes, and a run that raised an alarm is learned neither as normal nor into p.

Where long runs are the rule (a disk counter at 0 for hours, a square wave), a run is
reported only when it is longer than the recent over-threshold runs (recur.py); a run over
the threshold that was not reported is learned as normal when it ends.
"""

from __future__ import annotations

import math

from .recur import Recurrence

DECAY = 0.999
ALPHA = 1e-5
_LOG_ALPHA = math.log(ALPHA)


class StuckDetector:
    __slots__ = (
        "_a",
        "_last",
        "_over",
        "_recur",
        "_seen",
        "active",
        "factor",
        "fired",
        "longest",
        "min_run",
        "p_same",
        "run",
        "run_seq",
        "warmup",
    )

    def __init__(
        self, min_run: int = 3, factor: float = 1.5, warmup: int = 150, span: int = 1000
    ) -> None:
        self.min_run = min_run
        self.factor = factor
        self.warmup = warmup
        self._a = 1.0 / span
        self.longest = 1.0  # longest normal run (decaying)
        self.p_same = 0.0  # share of readings equal to the previous one
        self._last = float("nan")  # never equal: the first reading starts a run
        self._seen = 0
        self.run = 0  # readings in the current run of equal values
        self.run_seq = 0  # seq of its first reading
        self.active = False  # the current run raised an alarm
        self._over = False  # the current run passed the threshold
        self._recur = Recurrence(3.0)
        self.fired = False

    @property
    def threshold(self) -> int:
        """The run length that is reported as stuck."""
        p = self.p_same
        geometric = 1.0 + _LOG_ALPHA / math.log(p) if 0.0 < p < 1.0 else 1.0
        if p >= 1.0:
            geometric = math.inf
        return max(self.min_run, math.ceil(max(geometric, self.factor * self.longest)))

    def update(self, raw: float, seq: int) -> None:
        self.fired = False
        seen = self._seen = self._seen + 1
        if raw == self._last:
            run = self.run = self.run + 1
            if (
                not self.active
                and run >= self.min_run
                and seen > self.warmup
                and run >= self.threshold
            ):
                self._over = True
                if run > self._recur.bar(seen):
                    self.active = self.fired = True
            return
        if self._over:
            self._over = False
            self._recur.note(seen, float(self.run))
        if self.active:
            self.active = False
        elif self.run:
            # The run ended normally: it is learned now, as its run - 1 repeats and the
            # change that ended it (an EWMA, done at once).
            run = self.run
            a = self._a if seen * self._a > 1.0 else 1.0 / seen
            keep = (1.0 - a) ** run
            self.p_same = (1.0 - a) * (1.0 - (1.0 - self.p_same) * keep / (1.0 - a))
            self.longest = max(self.longest * DECAY, float(run))
        self._last = raw
        self.run = 1
        self.run_seq = seq
