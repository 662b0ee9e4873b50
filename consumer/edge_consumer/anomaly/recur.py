"""Recurrence: what a detector has found lately, so that the usual is not news.

A source can be made of what would be anomalies elsewhere: a server's CPU spikes every few
readings, a disk counter sits at 0 for hours at a time, a daily load swings as far as any
drift. Such a series would cry wolf at every repeat. So each detector keeps `heat`, its
findings of the last ~SPAN readings (each decaying by 1 - 1/SPAN per reading), and `big`, the
largest of their sizes (robust z, run length, drift / scale; decaying alike). While heat is
at least `frequent`, a new one is news only when it is MARGIN times bigger than `big`.
`frequent` is FREQUENT (about five findings lately) for spikes, 3 for stuck runs and 2 for
drifts (those are rarer, and a daily swing mistaken for a drift comes back once a day). On
the synthetic replica a sensor has one fault of a kind in a thousand readings or so (four
spikes within 300 readings on its densest device), and heat stays under these: the
replica's figures do not move (stuck at 2 would lose six stuck faults there).

Three floats per detector; one power per finding, none per reading.
"""

from __future__ import annotations

SPAN = 2000  # readings over which findings are remembered
FREQUENT = 5.0  # heat from which a finding must beat the recent ones
MARGIN = 1.5  # ... by this factor
_KEEP = 1.0 - 1.0 / SPAN


class Recurrence:
    __slots__ = ("_big", "_frequent", "_heat", "_noted")

    def __init__(self, frequent: float = FREQUENT) -> None:
        self._frequent = frequent
        self._heat = 0.0  # recent findings, decayed to reading _noted
        self._big = 0.0  # their largest size, likewise
        self._noted = 0

    def bar(self, n: int) -> float:
        """The size a finding at reading n must exceed to be news (0.0: any)."""
        keep = _KEEP ** (n - self._noted)
        return MARGIN * self._big * keep if self._heat * keep >= self._frequent else 0.0

    def note(self, n: int, size: float) -> None:
        """A finding of `size` at reading n, reported or not."""
        keep = _KEEP ** (n - self._noted)
        self._heat = self._heat * keep + 1.0
        big = self._big * keep
        self._big = size if size > big else big
        self._noted = n
