"""Recurrence: what a detector has found lately, so that the usual is not news.

A source can be made of what would be anomalies elsewhere: a server's CPU spikes every few
readings, a disk counter sits at 0 for hours at a time, a daily load swings as far as any
drift. Such a series would cry wolf at every repeat. So each detector keeps `heat`, its
findings of the last ~SPAN readings (each decaying by 1 - 1/SPAN per reading), and `big`, the
largest of their sizes (robust z, run length, drift / scale; decaying alike). While heat is
at least FREQUENT (about five findings lately), a new one is news only when it is MARGIN
times bigger than `big`. On the synthetic replica a sensor has one fault of a kind in a
thousand readings or so (four within 300 readings on its densest device), and heat stays
under FREQUENT: nothing changes there.

Three floats per detector; one power per finding, none per reading.
"""

from __future__ import annotations

SPAN = 2000  # readings over which findings are remembered
FREQUENT = 5.0  # heat from which a finding must beat the recent ones
MARGIN = 1.5  # ... by this factor
_KEEP = 1.0 - 1.0 / SPAN


class Recurrence:
    __slots__ = ("_big", "_heat", "_noted")

    def __init__(self) -> None:
        self._heat = 0.0  # recent findings, decayed to reading _noted
        self._big = 0.0  # their largest size, likewise
        self._noted = 0

    def bar(self, n: int) -> float:
        """The size a finding at reading n must exceed to be news (0.0: any)."""
        keep = _KEEP ** (n - self._noted)
        return MARGIN * self._big * keep if self._heat * keep >= FREQUENT else 0.0

    def note(self, n: int, size: float) -> None:
        """A finding of `size` at reading n, reported or not."""
        keep = _KEEP ** (n - self._noted)
        self._heat = self._heat * keep + 1.0
        big = self._big * keep
        self._big = size if size > big else big
        self._noted = n
