"""Drift: a sensor slowly leaving its own baseline, and coming back to it.

Two EWMAs of the reading (spike-cleaned; gas in log space): a fast one (span FAST readings,
~1.5 min at 5 s) and a slow baseline (span SLOW, ~40 min; a plain running mean while it has
seen fewer readings than that, so that it does not start out pinned to the first reading).
Their difference d is what has changed lately; its usual size, the scale, is the running mean
of |d| (span SCALE, clipped at 3x itself so that a drift under way barely inflates it).

The baseline learns each reading's distance from it clipped at HUBER x scale: natural change
rarely goes that far and is followed as before, while a drift can only drag the baseline
along at a bounded rate (on the replica an unclipped baseline had absorbed about a third of a
240-reading ramp before the alarm, enough to hide it).

Two ways to find a drift, one alarm per episode:
- on the way out: |d| > threshold x scale (never below the sensor's resolution). The scale is
  learned from a process whose natural swings last hundreds of readings, so after n readings
  it rests on few of them: the threshold is raised by sqrt(1 + TAU / n) (x1.7 at the 250th
  reading, x1.15 at the 1500th), which keeps a new device's first hours free of false
  alarms. The alarm stays on, once, while the sensor is away; the baseline is frozen
  meanwhile. It ends when d falls under release x scale or changes sign, or after
  `max_active` readings (a permanent change: accepted as the new baseline).
- on the way back: the reading jumps towards the baseline so abruptly that the spike
  detector holds it back (its robust z over 10), undoing a displacement that had built up (d
  at least RET x scale on the other side, the jump between half and OVER times d), and stays
  back for CONFIRM more readings. This is how a drift ends when the sensor is recalibrated,
  re-seated or restarted, and it finds the drifts that are too small to tell from the weather
  on the way out: on the replica a humid room's humidity wanders by up to 15 %RH in 10
  minutes on its own, as much as a drift, but moves by 3 %RH at most from one reading to the
  next. The alarm (`returned`) comes CONFIRM readings after the return; if the drift had been
  reported on the way out, the return only ends that alarm. A jump from a held-back reading
  (the end of a spike) is no return, and the CONFIRM readings rule out spikes shorter than
  CONFIRM + 1 readings.

Natural change is what limits the first way: on the replica, once the scale is learned,
|d| / scale stays under 5-8 on 99.9% of readings (9.7 at most, one board), so the threshold
is 7. A drift smaller than that many times the sensor's usual change over ~100 readings
cannot be told from the weather from one sensor's own history until it ends.

Where swings that big are the rule (a daily load), a drift on the way out is reported only
when d / scale beats the recent drifts' (recur.py); one that does not is an episode all the
same (the baseline frozen, released as usual), only not reported.

Constant memory (a few floats) and a few float operations per reading.
"""

from __future__ import annotations

from typing import Optional

from .recur import Recurrence

_NAN = float("nan")
_FIRST, _SNAP, _RESUMED = 1, 2, 3  # DriftDetector._mode: what the next reading is


class DriftDetector:
    __slots__ = (
        "_a_fast",
        "_a_scale",
        "_a_slow",
        "_from",
        "_left",
        "_mode",
        "_n",
        "_pending",
        "_prev",
        "_ramp",
        "_recur",
        "active",
        "away",
        "confirm",
        "d",
        "fast",
        "fired",
        "floor",
        "huber",
        "max_active",
        "over",
        "release",
        "ret",
        "returned",
        "scale",
        "since",
        "slow",
        "tau",
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
        huber: float = 2.0,
        tau: float = 500.0,
        ret: float = 1.5,
        over: float = 3.0,
        confirm: int = 2,
    ) -> None:
        self._a_fast = 2.0 / (fast + 1)
        self._a_slow = 2.0 / (slow + 1)
        self._a_scale = 1.0 / scale
        self._ramp = scale  # readings of running means
        self.threshold = threshold
        self.release = release
        self.warmup = warmup
        self.max_active = max_active
        self.huber = huber
        self.tau = tau
        self.ret = ret
        self.over = over
        self.confirm = confirm
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
        self.returned = False  # the last alarm was raised on the sensor's return
        self.away = 0.0  # ... and the level it came back from
        self._prev = _NAN  # the previous reading, NaN if the spike detector held it back
        self._pending = 0.0  # a return being confirmed: its jump (0.0: none)
        self._from = 0.0  # the level it jumped from
        self._left = 0  # readings still to confirm it
        self._mode = _FIRST
        self._recur = Recurrence(2.0)

    def resume(self) -> None:
        """After readings that were not the sensor's (a stuck episode): the change since is
        the environment's, not a jump, and is taken as the new level."""
        self._prev = _NAN
        self._pending = 0.0
        if not self._mode:
            self._mode = _RESUMED

    def update(self, x: float, floor: float, raw: Optional[float] = None) -> None:
        """One reading: x spike-cleaned (the old level while the spike detector holds an
        excursion back), raw as read, both on the detector's scale (gas: log); floor: the
        sensor's resolution, the least scale."""
        self.fired = False
        r = x if raw is None else raw
        n = self._n = self._n + 1
        prev = self._prev
        self._prev = r if x == r else _NAN  # a held-back reading is no start of a jump
        if self._mode and self._special(x, r):
            return
        w = self._a_scale
        w_slow = self._a_slow
        if n < self._ramp:  # running means at first, then exponential
            w = 1.0 / n
            if w > w_slow:
                w_slow = w
        sc = self.scale
        scale = sc if sc > floor else floor
        if self._pending:
            if self._confirm(r, n, floor):
                return
        elif x != r and prev == prev:
            jump = r - prev
            a = jump if jump >= 0.0 else -jump
            self._candidate(jump, a, prev, scale)
        fast = self.fast = self.fast + self._a_fast * (x - self.fast)
        if self.active:
            self._follow(fast, n)
            return
        slow = self.slow
        e = x - slow
        lim = self.huber * scale
        if (e > lim or e < -lim) and n > 50:
            e = lim if e > 0.0 else -lim
        slow = self.slow = slow + w_slow * e
        d = self.d = fast - slow
        a = d if d >= 0.0 else -d
        clip = 3.0 * sc  # clipped once it means something
        self.scale = sc + w * ((a if a < clip or n < 50 else clip) - sc)
        limit = self.threshold * scale
        if (
            a > limit
            and n > self.warmup
            and not self._pending
            and a > limit * (1.0 + self.tau / n) ** 0.5
        ):
            size = a / scale
            self.active = True
            self.fired = size > self._recur.bar(n)
            self._recur.note(n, size)
            self.returned = False
            self.up = d > 0.0
            self.since = n
            self.floor = floor

    def _special(self, x: float, r: float) -> bool:
        """The first reading, the one after a stuck episode, the ones after a return; True:
        nothing more to do with this one."""
        mode = self._mode
        if mode == _FIRST:
            self.fast = self.slow = x
            self._mode = 0
            return True
        if mode == _SNAP:  # after a return: wait for the spike detector to let go of it
            if x != r:
                return True
            self.fast = x
        else:  # _RESUMED
            shift = x - self.fast
            self.fast = x
            if not self.active:
                self.slow += shift
        self._mode = 0
        return False

    def _candidate(self, jump: float, a: float, prev: float, scale: float) -> None:
        """A jump from `prev`: a return if it undoes a displacement from the baseline."""
        d = self.fast - self.slow
        ad = d if d >= 0.0 else -d
        if (jump > 0.0) != (d > 0.0) and self.ret * scale < ad and 0.5 * ad < a < self.over * ad:
            self._pending, self._from, self._left = jump, prev, self.confirm

    def _confirm(self, r: float, n: int, floor: float) -> bool:
        """A reading after a return's jump: True when it confirms the return."""
        pending = self._pending
        back = r - self._from
        if (back > 0.0) != (pending > 0.0) or abs(back) <= 0.5 * abs(pending):
            self._pending = 0.0  # it did not stay back: a spike, or noise
            return False
        self._left -= 1
        if self._left > 0:
            return False
        self._returned(pending, n, floor)
        return True

    def _returned(self, jump: float, n: int, floor: float) -> None:
        """A confirmed return: ends an alarm under way, else is one (after the warmup)."""
        self._pending = 0.0
        self._mode = _SNAP
        if self.active:
            self.active = False
            return
        if n > self.warmup:
            self.fired = self.returned = True
            self.up = jump < 0.0
            self.d = -jump
            self.away = self._from
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
