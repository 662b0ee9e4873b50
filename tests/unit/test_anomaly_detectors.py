"""The anomaly detectors on constructed series: onsets found in time, flat noise left alone."""

from __future__ import annotations

import math
import random

import pytest
from edge_consumer.anomaly.drift import DriftDetector
from edge_consumer.anomaly.limits import impossible
from edge_consumer.anomaly.silence import Silence
from edge_consumer.anomaly.spike import SpikeDetector
from edge_consumer.anomaly.stuck import StuckDetector

NOISE = 50_000  # readings of plain noise that must raise nothing
DELAY = 3  # readings: the spike and stuck target


def noise(n: int, seed: int, sd: float = 0.2, level: float = 20.0) -> list[float]:
    rng = random.Random(seed)
    return [level + rng.gauss(0.0, sd) for _ in range(n)]


def wander(n: int, seed: int, step: float = 0.1, p_change: float = 0.4) -> list[float]:
    """A 0.1-resolution reading that changes by one step at a time, mean-reverting: the
    shape of a DHT temperature in a still room (long natural runs)."""
    rng = random.Random(seed)
    x, out = 0, []
    for _ in range(n):
        if rng.random() < p_change:
            x += -1 if rng.random() < 0.5 + 0.02 * x else 1
        out.append(round(22.0 + step * x, 1))
    return out


def spikes(series: list[float]) -> list[tuple[int, int]]:
    """(first spiked seq, seq it was reported at) for each spike found."""
    d = SpikeDetector()
    found = []
    for seq, x in enumerate(series):
        d.update(x, seq, float(seq), x)
        if d.fired:
            found.append((d.first_seq, seq))
    return found


# --- spike ---------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 3])
@pytest.mark.parametrize("size", [3.0, -5.0])
def test_spike_found_within_three_readings(length: int, size: float) -> None:
    series = noise(600, seed=1)
    onset = 400
    for i in range(onset, onset + length):
        series[i] += size
    found = spikes(series)
    assert len(found) == 1
    first, at = found[0]
    assert first == onset
    assert at - onset <= DELAY


def test_spike_in_log_space_and_on_a_quantized_flat_signal() -> None:
    # a temperature flat at 0.1 resolution: the steps' MAD is 0, the resolution is the scale
    series = wander(2000, seed=3, p_change=0.05)
    series[1500] += 2.0
    assert [f for f, _ in spikes(series)] == [1500]
    gas = [math.log(v) for v in noise(1000, seed=4, sd=1e-4, level=5e-3)]
    gas[700] += math.log(3.0)  # x3
    assert [f for f, _ in spikes(gas)] == [700]


def test_no_spikes_on_long_noise_nor_on_level_shifts() -> None:
    assert spikes(noise(NOISE, seed=5)) == []
    assert spikes(wander(NOISE, seed=6)) == []
    series = noise(1000, seed=7)
    for i in range(500, 1000):  # a step that stays is not a spike
        series[i] += 5.0
    assert spikes(series) == []


def test_spike_passes_on_the_old_level_while_open() -> None:
    d = SpikeDetector()
    series = noise(300, seed=8)
    for seq, x in enumerate(series[:200]):
        d.update(x, seq, 0.0, x)
    passed = d.update(series[200] + 10.0, 200, 0.0, series[200] + 10.0)
    assert abs(passed - 20.0) < 1.0  # the glitch is not handed to the drift baseline


# --- stuck ---------------------------------------------------------------------------------


def stuck_alarms(series: list[float]) -> list[int]:
    d = StuckDetector()
    found = []
    for seq, x in enumerate(series):
        d.update(x, seq)
        if d.fired:
            found.append(seq)
    return found


def test_stuck_continuous_signal_within_three_readings() -> None:
    series = noise(1000, seed=9)
    onset = 600
    for i in range(onset, onset + 50):
        series[i] = series[onset]
    found = stuck_alarms(series)
    assert len(found) == 1  # one alarm for the whole episode
    assert found[0] - onset <= DELAY


def test_stuck_learns_long_natural_runs_and_rearms() -> None:
    series = wander(20_000, seed=10)
    assert stuck_alarms(series) == []
    d = StuckDetector()
    for seq, x in enumerate(series):
        d.update(x, seq)
    threshold = d.threshold
    assert 5 < threshold < 60  # far longer than a 3-reading run, learned from the data
    more = series + [series[-1] + 5.0] * 200 + wander(500, seed=11) + [30.0] * 200
    found = stuck_alarms(more)
    assert len(found) == 2  # re-armed when the value changed
    assert found[0] - len(series) < threshold + 1


# --- drift ---------------------------------------------------------------------------------


def drift_alarms(series: list[float], floor: float = 0.0) -> list[int]:
    d = DriftDetector()
    found = []
    for seq, x in enumerate(series):
        d.update(x, floor)
        if d.fired:
            found.append(seq)
    return found


def smooth_noise(n: int, seed: int) -> list[float]:
    """Noise plus a slow AR(1) wander: what a room does."""
    rng = random.Random(seed)
    w, out = 0.0, []
    for _ in range(n):
        w = 0.995 * w + rng.gauss(0.0, 0.02)
        out.append(20.0 + w + rng.gauss(0.0, 0.1))
    return out


def test_drift_found_before_the_ramp_ends() -> None:
    series = smooth_noise(3000, seed=12)
    onset, length, size = 2000, 150, 4.0
    for i in range(onset, onset + length):
        series[i] += size * (i - onset + 1) / length
    for i in range(onset + length, len(series)):  # the sensor stays off
        series[i] += size
    found = drift_alarms(series)
    assert len(found) == 1
    assert onset <= found[0] < onset + length


def test_drift_returns_do_not_alarm_twice() -> None:
    series = smooth_noise(3000, seed=13)
    onset, length, size = 1500, 200, -4.0
    for i in range(onset, onset + length):
        series[i] += size * (i - onset + 1) / length
    found = drift_alarms(series)
    assert len(found) == 1  # the return to normal is not a second, opposite drift
    assert onset <= found[0] <= onset + length


def test_no_drift_on_long_noise() -> None:
    assert drift_alarms(smooth_noise(NOISE, seed=14)) == []
    assert drift_alarms(noise(NOISE, seed=15)) == []


# --- silence -------------------------------------------------------------------------------


def test_silence_tick_reports_once() -> None:
    s = Silence()
    for seq in range(20):
        assert s.observe(seq, 5.0 * seq, 5.0 * seq + 0.1) is None
    assert s.check(19 * 5.0 + 14.0) is None  # < 3 intervals
    silent = s.check(19 * 5.0 + 16.0)
    assert silent == pytest.approx(15.9)
    assert s.check(19 * 5.0 + 30.0) is None  # once per silence
    assert s.observe(20, 135.0, 135.1) is None  # reported already: not again on arrival
    assert s.check(136.0) is None


def test_silence_found_on_arrival_without_ticks() -> None:
    s = Silence()
    for seq in range(20):
        s.observe(seq, 5.0 * seq, 5.0 * seq)
    gap = s.observe(20, 95.0 + 40.0, 0.0)
    assert gap == pytest.approx(40.0)
    assert s.interval == pytest.approx(5.0)  # the gap itself is not learned
    assert s.observe(21, 140.0, 0.0) is None


def test_silence_ignores_a_backlog_burst() -> None:
    s = Silence()
    for seq in range(30):  # produced every 5 s, delivered at once after an outage
        assert s.observe(seq, 5.0 * seq, 1000.0) is None
    assert s.interval == pytest.approx(5.0)


# --- impossible values -----------------------------------------------------------------------


def test_impossible_values() -> None:
    sensors = ("temp", "humidity", "co", "lpg", "smoke")
    ok = {"temp": 22.7, "humidity": 51.0, "co": 0.005, "lpg": 0.007, "smoke": 0.02}
    assert impossible(ok, sensors) == {}
    glitch = {**ok, "temp": 0.0, "humidity": 1.1}  # the dataset's failed read
    assert set(impossible(glitch, sensors)) == {"temp", "humidity"}
    assert impossible({**ok, "temp": 0.0}, sensors) == {}  # 0.0 °C alone can be real
    assert set(impossible({**ok, "humidity": 101.0, "co": 0.0}, sensors)) == {"humidity", "co"}
    assert set(impossible({**ok, "temp": 95.0}, sensors)) == {"temp"}
