"""How long to wait after publishing one reading before producing the next."""

from __future__ import annotations

from typing import Optional

from .dataset import Slice


class Pacer:
    """Fixed interval, a fixed --rate, or the dataset's own gaps divided by --replay-speed."""

    def __init__(
        self,
        interval: float,
        rate: Optional[float] = None,
        replay_speed: Optional[float] = None,
        readings: Optional[Slice] = None,
    ) -> None:
        if replay_speed is not None and readings is None:
            raise ValueError("replay_speed needs the slice's timestamps")
        self.interval = interval
        self.rate = rate
        self.replay_speed = replay_speed
        self.readings = readings

    def gap_after(self, row: int) -> float:
        """Seconds between producing `row` and producing the row after it."""
        if self.rate is not None:
            return 1.0 / self.rate
        if self.replay_speed is not None and self.readings is not None:
            if row + 1 >= len(self.readings):
                return self.interval  # wrapping to the start has no original gap
            gap = self.readings.ts_at(row + 1) - self.readings.ts_at(row)
            # max(): unsorted or duplicate timestamps must not make a negative wait.
            return max(0.0, gap) / self.replay_speed
        return self.interval
