"""Seeded sensor-fault injection (off by default): spike, stuck, drift and dropout episodes.

Enabled with `--faults SPEC` / EDGE_AGENT_FAULTS, e.g. "seed=7,rate=0.01,kinds=spike+stuck".
The episodes are a pure function of (seed, device_id) over seq, so an evaluator recomputes
exactly which seqs were faulted and how (`schedule`); nothing in the payload marks them.

Seq space is cut into blocks of BLOCK seqs, each drawn from its own random.Random seeded with
(seed, device_id, block): any seq's episode is found without replaying the history, and
episodes never cross a block. In each block, after a clean gap of at least MIN_GAP readings,
every further clean reading starts an episode with probability `rate` (a geometric wait).
No episode starts before seq WARMUP: detectors need a baseline, as a new device would.

What each kind does to the readings (the sensor boards: one DHT-class chip gives temp and
humidity, one MQ-2 gives co, lpg and smoke, which a gas fault moves together):
- spike: 1-3 readings of one target offset (temp ±3-12 °C, humidity ±10-40 %RH, gas x or
  / 2-8), the way a bad read or an electrical glitch looks;
- stuck: one chip (climate or gas) repeats the values of the episode's first reading for
  20-120 readings, like a hung driver returning its last sample;
- drift: one target's offset ramps linearly from 0 to its final value (temp ±2-6 °C,
  humidity ±8-25 %RH, gas x or / 1.5-4) over 60-240 readings, then the sensor recovers;
- dropout: the board reports nothing for 6-60 publish slots. The agent stays alive and
  publishes nothing and its seq does not advance: the episode at seq s is the silence before
  seq s, which is then published as usual (as a sensor that stops answering looks).
Faulted temp and humidity keep the board's 0.1 resolution, its float32 spelling if it logs
float32 (19.299999237060547), and the plausible range: a value never gives a fault away.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any, NamedTuple, Optional

KINDS = ("spike", "stuck", "drift", "dropout")
CLIMATE = ("temp", "humidity")
GAS = ("co", "lpg", "smoke")
BLOCK = 2048  # seqs per independently seeded block
WARMUP = 200  # no episode starts before this seq
MIN_GAP = 60  # clean readings at least between episodes: detectors settle again

# The MQ-2 derives co, lpg and smoke from one resistance ratio by power laws, so a change of
# that ratio by factor f moves co by f and lpg, smoke by f**k. The exponents fit the
# published overall ranges (as edge_dataset.replica does): ln(range ratio) / ln(co's).
_GAS_EXPONENT = {
    "co": 1.0,
    "lpg": math.log(0.016567 / 0.002693) / math.log(0.014420 / 0.001171),
    "smoke": math.log(0.046590 / 0.006692) / math.log(0.014420 / 0.001171),
}
_F32 = struct.Struct("<f")
_RANGE = {"temp": (-40.0, 80.0), "humidity": (5.0, 100.0)}  # what the detectors call plausible

# Per kind: (min length, max length) and per target (min, max) magnitude; gas in ln(factor).
_LENGTH = {"spike": (1, 3), "stuck": (20, 120), "drift": (60, 240), "dropout": (6, 60)}
_SPIKE = {"temp": (3.0, 12.0), "humidity": (10.0, 40.0), "gas": (math.log(2), math.log(8))}
_DRIFT = {"temp": (2.0, 6.0), "humidity": (8.0, 25.0), "gas": (math.log(1.5), math.log(4))}


class FaultSpec(NamedTuple):
    seed: int
    rate: float
    kinds: tuple[str, ...]

    def __str__(self) -> str:
        return f"seed={self.seed},rate={self.rate:g},kinds={'+'.join(self.kinds)}"


class Episode(NamedTuple):
    kind: str
    start: int  # first faulted seq; dropout: the seq published after the silence
    length: int  # faulted readings; dropout: silent publish slots
    sensors: tuple[str, ...]  # the payload's data fields it changes (dropout: none)
    magnitude: float  # spike: offset, drift: final offset (gas: ln factor); else 0

    @property
    def end(self) -> int:
        """Last faulted seq (dropout: `start`, the first reading after the silence)."""
        return self.start if self.kind == "dropout" else self.start + self.length - 1


def parse_spec(text: str) -> FaultSpec:
    """'seed=7,rate=0.01,kinds=spike+stuck+drift+dropout' (each key optional: seed 0, rate
    0.01, all kinds); raises ValueError naming the bad part."""
    seed, rate = 0, 0.01
    kinds: tuple[str, ...] = KINDS
    seen: set[str] = set()
    for part in text.split(","):
        key, eq, value = (s.strip() for s in part.partition("="))
        if not eq or not value:
            raise ValueError(f"{part.strip()!r} is not key=value (keys: seed, rate, kinds)")
        if key in seen:
            raise ValueError(f"{key} given twice")
        seen.add(key)
        if key == "seed":
            try:
                seed = int(value)
            except ValueError:
                raise ValueError(f"seed {value!r} is not an integer") from None
        elif key == "rate":
            try:
                rate = float(value)
            except ValueError:
                raise ValueError(f"rate {value!r} is not a number") from None
            if not 0 < rate <= 1:
                raise ValueError(f"rate {value!r} must be in (0, 1]")
        elif key == "kinds":
            names = tuple(k.strip() for k in value.split("+"))
            bad = [k for k in names if k not in KINDS]
            if bad or len(set(names)) != len(names):
                raise ValueError(f"kinds {value!r}: use distinct {'+'.join(KINDS)}")
            kinds = tuple(k for k in KINDS if k in names)  # canonical order
        else:
            raise ValueError(f"unknown key {key!r} (keys: seed, rate, kinds)")
    return FaultSpec(seed, rate, kinds)


def _episode(rng: random.Random, kind: str, start: int) -> Episode:
    lo, hi = _LENGTH[kind]
    length = rng.randint(lo, hi)
    if kind == "dropout":
        return Episode(kind, start, length, (), 0.0)
    if kind == "stuck":
        return Episode(kind, start, length, rng.choice((CLIMATE, GAS)), 0.0)
    target = rng.choice(("temp", "humidity", "gas"))
    low, high = (_SPIKE if kind == "spike" else _DRIFT)[target]
    magnitude = rng.uniform(low, high) * rng.choice((-1.0, 1.0))
    return Episode(kind, start, length, GAS if target == "gas" else (target,), magnitude)


def block_episodes(spec: FaultSpec, device_id: str, block: int) -> list[Episode]:
    """The episodes that start in seqs [block * BLOCK, (block + 1) * BLOCK), in seq order."""
    rng = random.Random(f"edge-faults:{spec.seed}:{device_id}:{block}")  # sha512: stable
    end = (block + 1) * BLOCK
    pos = max(block * BLOCK, WARMUP)
    out: list[Episode] = []
    log_clean = math.log1p(-spec.rate) if spec.rate < 1 else -math.inf
    while True:
        # Readings until the next start: MIN_GAP, then geometric with success `rate`.
        u = 1.0 - rng.random()  # (0, 1]
        pos += MIN_GAP + (int(math.log(u) / log_clean) if log_clean > -math.inf else 0)
        episode = _episode(rng, rng.choice(spec.kinds), pos)
        if episode.end >= end:
            return out
        out.append(episode)
        pos = episode.end + 1


def schedule(spec: FaultSpec, device_id: str, first: int, last: int) -> list[Episode]:
    """Every episode that faults a seq in [first, last] (dropouts: whose start is in it)."""
    out: list[Episode] = []
    for block in range(first // BLOCK, last // BLOCK + 1):
        out += [e for e in block_episodes(spec, device_id, block) if e.end >= first]
    return [e for e in out if e.start <= last]


def _float32(value: float) -> float:
    return float(_F32.unpack(_F32.pack(value))[0])


def _logs_float32(value: float) -> bool:
    """Whether a 0.1-step reading shows a float32 board (19.299999237060547); 19.5 shows
    nothing either way."""
    return value != round(value, 1) and _float32(value) == value


def _like(sensor: str, value: float, float32: bool) -> float:
    """`value` as the board writes it: 0.1 steps, within the plausible range, widened from
    float32 if the board logs float32 (a plain 19.3 among 19.299999237060547s would mark the
    faulted readings)."""
    lo, hi = _RANGE[sensor]
    value = round(min(max(value, lo), hi), 1) or 0.1  # exact 0.0 is the DHT's failed read
    return _float32(value) if float32 else value


class FaultInjector:
    """Applies one device's episodes to its readings, in (mostly) increasing seq order."""

    def __init__(self, spec: FaultSpec, device_id: str) -> None:
        self.spec = spec
        self.device_id = device_id
        self._block = -1
        self._episodes: list[Episode] = []
        self._held: Optional[tuple[int, dict[str, Any]]] = None  # stuck: (start, values)
        self._silent: tuple[int, int] = (-1, 0)  # dropout: (seq, slots already silent)
        self._float32 = False  # the board logs temp and humidity as float32

    def episode(self, seq: int) -> Optional[Episode]:
        """The episode that faults `seq` (dropout: that starts at it), or None."""
        block = seq // BLOCK
        if block != self._block:
            self._block, self._episodes = block, block_episodes(self.spec, self.device_id, block)
        for e in self._episodes:
            if e.start <= seq <= e.end:
                return e
            if e.start > seq:
                break
        return None

    def silent(self, seq: int) -> bool:
        """Whether the publish slot that would produce `seq` stays silent (a dropout before
        it). Counts the slots, so call it once per slot. After an agent restart the silence
        is served again in full: a restart is no reason for the sensor to recover."""
        e = self.episode(seq)
        if e is None or e.kind != "dropout":
            return False
        done = self._silent[1] if self._silent[0] == seq else 0
        if done >= e.length:
            return False
        self._silent = (seq, done + 1)
        return True

    def apply(self, seq: int, data: dict[str, Any]) -> dict[str, Any]:
        """The reading `data` (payload fields) as the faulty sensor reports it at `seq`."""
        if not self._float32:
            self._float32 = any(_logs_float32(data[s]) for s in CLIMATE)
        e = self.episode(seq)
        if e is None or e.kind == "dropout":
            return data
        out = dict(data)
        if e.kind == "stuck":
            # The first reading of the episode that this process sees (after a restart in the
            # middle of an episode, the first one after it).
            if self._held is None or self._held[0] != e.start:
                self._held = (e.start, {s: data[s] for s in e.sensors})
            out.update(self._held[1])
            return out
        # spike: the full offset; drift: a ramp reaching it at the episode's last reading
        offset = e.magnitude * (1.0 if e.kind == "spike" else (seq - e.start + 1) / e.length)
        for s in e.sensors:
            if s in _GAS_EXPONENT:
                out[s] = data[s] * math.exp(offset * _GAS_EXPONENT[s])
            else:
                value = data[s] + offset
                lo, hi = _RANGE[s]
                if e.kind == "spike" and not lo <= value <= hi:
                    value = data[s] - offset  # a spike away from the physical limit
                out[s] = _like(s, value, self._float32)
        return out
