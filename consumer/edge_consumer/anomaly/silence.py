"""Dropout: a device that stops sending for more than k of its own intervals.

The interval is learned per device from the readings' own timestamps (the agent's production
times: a backlog delivered after an outage keeps them, so a burst of arrivals does not make
the interval look short): an EWMA over 16 gaps, each clipped to 0.5-2x the current estimate
so that one long gap (a dropout itself) barely moves it. Silence is judged on the consumer's
clock, `now - arrived` with both from the caller, so clock skew between a Pi and the consumer
does not matter. tick(now) reports a device once when it passes k intervals of silence; a
reading arriving after a longer gap in its timestamps that no tick reported (offline scoring,
or a consumer that does not tick) is reported then. k = 3: the replica's gaps are 0.6-1.4x
the mean, and the agent's fixed interval jitters far less.

Some sources are irregular by nature (a road sensor of the Numenta benchmark: median gap 5
min, one gap in ten over 10 min, one in a hundred over 40). So the silence must also be
longer than SPREAD x the device's own 99th percentile of gap / interval, learned online (a
streaming quantile in log space, moved up by STEP x 0.99 on a gap above it and down by
STEP x 0.01 below it; starts at 1). On the replica and the agent's fixed interval that
percentile stays under 1.5, so k rules; a device whose gaps are irregular stops crying
dropout at every long gap within a few hundred readings.

Warm-up is quiet: nothing is reported before WARMUP gaps have been learned (the interval is
an EWMA over about that many), so a new device's first irregular minutes are not dropouts.
"""

from __future__ import annotations

import math
from typing import Optional

INTERVALS = 3.0
_A = 2.0 / 17.0  # EWMA over ~16 gaps
SPREAD = 2.0
WARMUP = 16  # gaps learned before any dropout is reported
QUANTILE = 0.99
STEP = 0.2  # log-ratio step of the quantile
_UP, _DOWN = STEP * QUANTILE, STEP * (1.0 - QUANTILE)


class Silence:
    __slots__ = ("_gaps", "_q", "arrived", "interval", "k", "reported", "seq", "ts")

    def __init__(self, k: float = INTERVALS) -> None:
        self.k = k
        self.interval = 0.0  # 0: not known yet
        self.ts = float("nan")  # timestamp, seq and arrival time of the last reading
        self.seq = -1
        self.arrived = 0.0
        self.reported = False  # this silence was reported by tick()
        self._q = 0.0  # log of the 99th percentile of gap / interval
        self._gaps = 0  # gaps seen

    @property
    def limit(self) -> float:
        """Intervals of silence that make a dropout."""
        k = self.k
        spread = SPREAD * math.exp(self._q)
        return k if k > spread else spread

    def observe(self, seq: int, ts: float, arrived: float) -> Optional[float]:
        """A reading in seq order; returns the gap before it if that was an unreported
        dropout (longer than k intervals)."""
        gap = ts - self.ts  # NaN for the first reading: no comparison holds
        found: Optional[float] = None
        interval = self.interval
        if gap > 0:
            self._gaps += 1
            if interval == 0.0:
                self.interval = gap
                return self._done(seq, ts, arrived, None)
            over = gap > self.limit * interval
            if math.log(gap / interval) > self._q:  # learnt after it is judged
                self._q += _UP
            else:
                self._q -= _DOWN
            if over:
                if not self.reported and self._gaps > WARMUP:
                    found = gap
            else:
                clipped = min(max(gap, 0.5 * interval), 2.0 * interval)
                self.interval = interval + _A * (clipped - interval)
        return self._done(seq, ts, arrived, found)

    def _done(self, seq: int, ts: float, arrived: float, found: Optional[float]) -> Optional[float]:
        self.reported = False
        self.ts, self.seq, self.arrived = ts, seq, arrived
        return found

    def check(self, now: float) -> Optional[float]:
        """Seconds silent if this device just passed k intervals of silence, else None."""
        if self.reported or self._gaps < WARMUP:
            return None
        silent = now - self.arrived
        if silent > self.limit * self.interval:
            self.reported = True
            return silent
        return None
