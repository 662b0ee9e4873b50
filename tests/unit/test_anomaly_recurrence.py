"""Sources whose normal looks like anomalies elsewhere: the usual must stop being news."""

from __future__ import annotations

import math
import random

import pytest
from edge_consumer.anomaly import recur
from edge_consumer.anomaly.drift import DriftDetector
from edge_consumer.anomaly.recur import Recurrence
from edge_consumer.anomaly.silence import Silence
from edge_consumer.anomaly.spike import SpikeDetector
from edge_consumer.anomaly.stuck import StuckDetector


def test_recurrence_bar() -> None:
    r = Recurrence()
    assert r.bar(0) == 0.0
    for n in range(0, 70, 10):  # seven findings of size 10, 10 readings apart
        assert r.bar(n) == 0.0 or n >= 50  # not frequent yet: anything is news
        r.note(n, 10.0)
    bar = r.bar(100)
    assert 10.0 < bar < recur.MARGIN * 10.0  # frequent: must beat the recent ones, decayed
    assert r.bar(60 + 5 * recur.SPAN) == 0.0  # long quiet: forgotten


def test_spikes_all_the_time_are_not_news_but_a_bigger_one_is() -> None:
    rng = random.Random(3)
    series = [20.0 + rng.gauss(0.0, 0.2) for _ in range(6000)]
    for i in range(100, 6000, 37):  # a spike of ~z 30 every 37 readings
        series[i] += 6.0
    series[5000] += 40.0
    d = SpikeDetector()
    found = []
    for seq, x in enumerate(series):
        d.update(x, seq, float(seq), x)
        if d.fired:
            found.append(d.first_seq)
    assert 5 <= len(found) <= 8  # the first few, then only what beats them
    assert found[-1] == 5000


def test_square_wave_is_not_stuck_for_ever() -> None:
    d = StuckDetector()
    fired = []
    for seq in range(288 * 14):  # two weeks of a daily square wave at 5-min samples
        d.update(20.0 if seq % 288 < 180 else 80.0, seq)  # 15 h low, 9 h high
        if d.fired:
            fired.append(seq)
    assert fired  # the first long runs do look stuck
    assert len(fired) <= 8
    assert all(seq < 288 * 4 for seq in fired)


def test_daily_swing_stops_being_drift() -> None:
    d = DriftDetector()
    fired = []
    for n in range(288 * 14):
        x = 20.0 + 10.0 * math.sin(2 * math.pi * n / 288) ** 9  # sharp daily peaks
        d.update(x, 0.01, x)
        if d.fired:
            fired.append(n)
    assert len(fired) <= 8
    assert all(n < 288 * 9 for n in fired)


def gaps(seed: int, regular: bool, n: int = 3000) -> list[float]:
    rng = random.Random(seed)
    if regular:
        return [5.0 * rng.uniform(0.6, 1.4) for _ in range(n)]
    return [300.0 * math.exp(rng.gauss(0.0, 0.8)) for _ in range(n)]  # a road sensor's


def dropouts(intervals: list[float]) -> list[int]:
    s = Silence()
    ts, found = 0.0, []
    for seq, gap in enumerate(intervals):
        ts += gap
        if s.observe(seq, ts, ts) is not None:
            found.append(seq)
    return found


def test_irregular_gaps_stop_looking_like_dropouts() -> None:
    found = dropouts(gaps(4, regular=False))  # 3,000 gaps: 30 over their 99th percentile
    assert len(found) <= 6
    assert sum(seq > 600 for seq in found) <= 1
    assert dropouts(gaps(5, regular=True)) == []


def test_regular_source_keeps_its_dropout_limit() -> None:
    intervals = gaps(6, regular=True)
    intervals[2000] = 5.0 * 3.5  # just over 3 intervals
    assert dropouts(intervals) == [2000]


def test_dropout_warm_up_is_quiet() -> None:
    s = Silence()
    ts = 0.0
    for seq in range(17):  # a new device, irregular at first: 5 s, then a 60 s gap
        ts += 60.0 if seq == 4 else 5.0
        assert s.observe(seq, ts, ts) is None  # 16 gaps: the interval is learned
        if seq < 16:
            assert s.check(ts + 100.0) is None  # nor is a silence while it learns
    ts += 60.0  # the 17th gap is judged
    assert s.observe(17, ts, ts) == pytest.approx(60.0)
