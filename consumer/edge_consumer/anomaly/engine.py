"""AnomalyEngine: every detector, per device and sensor, on every valid reading.

    engine = AnomalyEngine()
    for anomaly in engine.observe(t.device_id, t.seq, t.ts, t.data, epoch=t.epoch):
        publish(anomaly_topic(anomaly.device_id), anomaly.to_json())
    for anomaly in engine.tick(time.time()):      # about once a second: dropouts
        ...

Memory is constant per device: fixed windows and a few floats per sensor. Readings must
come in seq order per device; a seq at or below the last one seen (a QoS 1 redelivery, a
restarted agent resending) is ignored, since a repeated reading would look like a stuck
sensor. A new epoch (the agent lost its state) starts the seq order again but keeps what was
learned about the sensor.

One alarm per episode: each detector reports an episode once and re-arms when it ends, and
sensors of one chip (temp and humidity: one DHT; co, lpg, smoke: one MQ-2) share episodes:
onsets of one kind on the same reading become one Anomaly (sensor "co,lpg,smoke"), and an
onset while another sensor of the chip is already in that kind of episode is not reported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple, Optional

from edge_agent.protocol import NUMERIC_FIELDS

from . import multivariate
from .drift import DriftDetector
from .limits import RANGES, impossible
from .record import DEVICE, Anomaly
from .silence import INTERVALS, Silence
from .spike import SpikeDetector
from .stuck import StuckDetector

_log = math.log


class EngineConfig(NamedTuple):
    sensors: tuple[str, ...] = NUMERIC_FIELDS
    log_sensors: tuple[str, ...] = ("co", "lpg", "smoke")  # multiplicative: judged in log
    chips: tuple[tuple[str, ...], ...] = (("temp", "humidity"), ("co", "lpg", "smoke"))
    spike_threshold: float = 10.0
    spike_window: int = 32
    stuck_factor: float = 1.5
    drift_threshold: float = 7.0
    silence_intervals: float = INTERVALS
    multivariate: bool = False  # HalfSpaceTrees; needs river (the `anomaly` extra)
    multivariate_threshold: float = 0.995  # clean readings on the replica: 99.99% under 0.992


class _Channel:
    """One sensor of one device."""

    __slots__ = ("bad", "drift", "high", "log", "low", "name", "spike", "stuck")

    def __init__(self, name: str, config: EngineConfig) -> None:
        self.name = name
        self.log = name in config.log_sensors
        self.low, self.high = RANGES.get(name, (-math.inf, math.inf))
        self.spike = SpikeDetector(window=config.spike_window, threshold=config.spike_threshold)
        self.stuck = StuckDetector(factor=config.stuck_factor)
        self.drift = DriftDetector(threshold=config.drift_threshold)
        self.bad = False  # in an impossible-value episode

    def active(self, kind: str) -> bool:
        if kind == "stuck":
            return self.stuck.active
        if kind == "drift":
            return self.drift.active
        return kind == "impossible" and self.bad


class _Device:
    __slots__ = ("channels", "epoch", "hst", "seq", "silence")

    def __init__(self, config: EngineConfig, seed: int) -> None:
        self.channels = [_Channel(s, config) for s in config.sensors]
        self.silence = Silence(config.silence_intervals)
        self.seq = -1
        self.epoch: Optional[int] = None
        self.hst = (
            multivariate.HalfSpace(seed, threshold=config.multivariate_threshold)
            if config.multivariate
            else None
        )


class _Onset(NamedTuple):
    kind: str
    sensor: str
    seq: int
    ts: float
    value: float
    score: float
    detail: str


class AnomalyEngine:
    def __init__(self, config: Optional[EngineConfig] = None) -> None:
        self.config = config = config or EngineConfig()
        self._devices: dict[str, _Device] = {}
        self._chip: dict[str, tuple[str, ...]] = {s: (s,) for s in config.sensors}
        for chip in config.chips:
            for s in chip:
                self._chip[s] = chip
        if config.multivariate and not multivariate.available():
            raise RuntimeError("the multivariate detector needs river: pip install river")

    def __len__(self) -> int:
        return len(self._devices)

    def forget(self, device_id: str) -> None:
        """Drop a device's state (it left the fleet)."""
        self._devices.pop(device_id, None)

    def observe(
        self,
        device_id: str,
        seq: int,
        ts: float,
        data: Mapping[str, Any],
        epoch: Optional[int] = None,
        now: Optional[float] = None,
    ) -> list[Anomaly]:
        """One valid reading (validation.Telemetry's fields); `now` is its arrival time on
        the clock tick() is given (default time.time()). Returns the anomalies it reveals."""
        dev = self._devices.get(device_id)
        if dev is None:
            dev = self._devices[device_id] = _Device(self.config, len(self._devices))
        if epoch != dev.epoch:
            dev.epoch, dev.seq = epoch, -1
        elif seq <= dev.seq:
            return []
        dev.seq = seq
        out: list[Anomaly] = []
        silence = dev.silence
        before, before_ts = silence.seq, silence.ts
        gap = silence.observe(seq, ts, time.time() if now is None else now)
        if gap is not None:  # a silence no tick() reported: found now, filed where it began
            out.append(
                Anomaly(
                    device_id,
                    DEVICE,
                    "dropout",
                    before,
                    before_ts,
                    gap,
                    gap / silence.interval,
                    f"no reading for {gap:.1f} s after this one, until seq {seq} (usual "
                    f"interval {silence.interval:.1f} s)",
                )
            )
        bad: Optional[dict[str, str]] = None
        for ch in dev.channels:  # cheap screen; limits.impossible() says why
            v = data[ch.name]
            if not ch.low < v <= ch.high or v == 0.0:
                bad = impossible(data, self.config.sensors)
                break
        onsets: list[_Onset] = []
        for ch in dev.channels:
            name = ch.name
            if bad and name in bad:
                if not ch.bad:
                    ch.bad = True
                    onsets.append(
                        _Onset("impossible", name, seq, ts, float(data[name]), 1.0, bad[name])
                    )
                continue
            ch.bad = False
            raw = data[name]
            stuck = ch.stuck
            was_stuck = stuck.active
            stuck.update(raw, seq)
            if stuck.active:
                if stuck.fired:
                    onsets.append(_stuck_onset(name, seq, ts, raw, stuck))
                continue  # a stuck sensor's values are not the environment's: not learned
            spike = ch.spike
            drift = ch.drift
            if was_stuck:
                spike.restart()
                drift.resume()
            x = _log(raw) if ch.log else raw
            y = spike.update(x, seq, ts, raw)
            if spike.fired:
                onsets.append(_spike_onset(name, seq, spike, ch.log))
            drift.update(y, 0.5 * spike.step, x)
            if drift.fired:
                onsets.append(_drift_onset(name, seq, ts, raw, drift, ch.log))
        hst = dev.hst
        if hst is not None and not bad:
            hst.update(_features(dev.channels))
            if hst.fired:
                out.append(
                    Anomaly(
                        device_id,
                        DEVICE,
                        "multivariate",
                        seq,
                        ts,
                        hst.score,
                        hst.score,
                        f"HalfSpaceTrees score {hst.score:.3f}",
                    )
                )
        if onsets:
            out += self._episodes(device_id, dev, onsets)
        return out

    def _episodes(self, device_id: str, dev: _Device, onsets: list[_Onset]) -> Iterator[Anomaly]:
        """One Anomaly per (kind, chip) among this reading's onsets, unless the chip already
        was in such an episode."""
        channels = {ch.name: ch for ch in dev.channels}
        groups: dict[tuple[str, tuple[str, ...]], list[_Onset]] = {}
        for o in onsets:
            groups.setdefault((o.kind, self._chip[o.sensor]), []).append(o)
        for (kind, chip), group in groups.items():
            names = {o.sensor for o in group}
            if any(channels[s].active(kind) for s in chip if s not in names and s in channels):
                continue
            top = max(group, key=lambda o: o.score)
            first = min(group, key=lambda o: o.seq)
            yield Anomaly(
                device_id,
                ",".join(o.sensor for o in group),
                kind,
                first.seq,
                first.ts,
                top.value,
                top.score,
                top.detail,
            )

    def tick(self, now: float) -> list[Anomaly]:
        """Devices that have just been silent for more than k of their intervals, once per
        silence. `now` is on the clock of observe()'s `now`. Do not tick while the consumer
        itself is cut off from the broker: every device would look silent."""
        out = []
        for device_id, dev in self._devices.items():
            silent = dev.silence.check(now)
            if silent is not None:
                s = dev.silence
                out.append(
                    Anomaly(
                        device_id,
                        DEVICE,
                        "dropout",
                        s.seq,
                        now,
                        silent,
                        silent / s.interval,
                        f"silent for {silent:.1f} s since seq {s.seq} (usual interval "
                        f"{s.interval:.1f} s)",
                    )
                )
        return out


def _stuck_onset(name: str, seq: int, ts: float, raw: float, stuck: StuckDetector) -> _Onset:
    return _Onset(
        "stuck",
        name,
        seq,
        ts,
        float(raw),
        stuck.run / stuck.threshold,
        f"{name} has been {raw:g} for {stuck.run} readings since seq {stuck.run_seq} "
        f"(normal runs up to {stuck.longest:.0f}, {100 * stuck.p_same:.0f}% repeats)",
    )


def _spike_onset(name: str, seq: int, spike: SpikeDetector, log: bool) -> _Onset:
    return _Onset(
        "spike",
        name,
        spike.first_seq,
        spike.first_ts,
        float(spike.peak),
        spike.peak_z,
        f"{name} {spike.peak:g}: robust z {spike.peak_z:.1f} against "
        f"{_show(spike.level, log):g}, back at seq {seq}",
    )


def _drift_onset(
    name: str, seq: int, ts: float, raw: float, drift: DriftDetector, log: bool
) -> _Onset:
    way = "up" if drift.up else "down"
    if drift.returned:  # found when it ended: the sensor jumped back to its baseline
        detail = (
            f"{name} came back to {raw:g} from {_show(drift.away, log):g}: it had drifted "
            f"{way} from baseline {_show(drift.slow, log):g}"
        )
    else:
        detail = (
            f"{name} {way}: recent {_show(drift.fast, log):g} against baseline "
            f"{_show(drift.slow, log):g}"
        )
    return _Onset(
        "drift", name, seq, ts, float(raw), abs(drift.d) / max(drift.scale, drift.floor), detail
    )


def _squash(u: float) -> float:
    """(-inf, inf) -> (0, 1), linear near 0: HalfSpaceTrees wants features in [0, 1]."""
    return 0.5 + 0.5 * math.tanh(u / 4.0)


def _features(channels: list[_Channel]) -> dict[str, float]:
    """Per sensor, how far the reading is from its recent level and how far that level is
    from the baseline, each in units of the sensor's usual change: stationary, unlike the
    readings themselves, whose slow wander makes every new value look unseen."""
    out = {}
    for ch in channels:
        drift = ch.drift
        scale = max(drift.scale, drift.floor, 1e-12)
        x = ch.spike.last
        out[ch.name] = _squash((x - drift.fast) / scale)
        out[ch.name + "/baseline"] = _squash(drift.d / scale)
    return out


def _show(x: float, log: bool) -> float:
    """A detector's internal value as a reading (gas is judged in log space)."""
    return math.exp(x) if log else x
