"""A synthetic replica of the sensor dataset, calibrated to the published figures.

It exists because no machine here can download the real file. It is never real data: `sample`
writes a sidecar marker `<path>.synthetic` holding the replica's sha256, and every reader of the
file (validate, slice) reports it as SYNTHETIC when the marker matches the bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from edge_agent.protocol import COLUMNS

from . import published as pub
from .atomic import write_atomic

MARKER_SUFFIX = ".synthetic"
DEFAULT_SEED = 0
_DAY = 86_400.0
# The real file's first and last timestamps (rounded to ms they give the published ISO times).
_TS_FIRST = 1594512094.3859746
_TS_LAST = 1595203417.2641335
# co -> lpg / smoke: the MQ-2 sensor derives all three from one resistance ratio by power laws,
# so they rise and fall together. Fitted to the published overall ranges (end points exact).
_CO_LO, _CO_HI = pub.CO_RANGE
_LPG_EXP = np.log(pub.LPG_RANGE[1] / pub.LPG_RANGE[0]) / np.log(_CO_HI / _CO_LO)
_SMOKE_EXP = np.log(pub.SMOKE_RANGE[1] / pub.SMOKE_RANGE[0]) / np.log(_CO_HI / _CO_LO)


@dataclass(frozen=True)
class _Profile:
    """What the published tables leave open, chosen to look like the real sensors."""

    sensor: pub.Sensor
    duplicates: int  # exact duplicate rows (13 in total)
    t_start: float
    t_end: float
    temp_floor: float  # lowest non-glitch temperature
    humidity_floor: float  # lowest non-glitch humidity
    co_mean: float
    glitches: int  # readings with temp 0.0 and humidity near 1
    float32: bool  # temp/humidity logged as float32 widened to double ("19.700000762939453")
    light_constant: bool
    diurnal: float  # weight of the day/night cycle in temp/humidity


_PROFILES = (
    _Profile(
        pub.SENSORS[0], 6, _TS_FIRST, _TS_LAST - 0.93, 21.0, 45.1, 0.0052, 0, False, False, 0.4
    ),
    _Profile(
        pub.SENSORS[1], 4, _TS_FIRST + 0.41, _TS_LAST - 2.2, 17.0, 60.0, 0.0030, 6, True, False, 0.5
    ),
    _Profile(pub.SENSORS[2], 3, _TS_FIRST + 1.13, _TS_LAST, 19.0, 35.0, 0.0046, 4, True, True, 1.0),
)


def _smooth(rng: np.random.Generator, n: int, window: int) -> np.ndarray:
    """White noise averaged over `window` readings: slow, wandering, unit variance."""
    noise = rng.standard_normal(n + window)
    out = np.convolve(noise, np.ones(window) / window, mode="valid")[:n]
    return out / (out.std() or 1.0)


def _unit(x: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] so both ends are attained exactly."""
    lo, hi = x.min(), x.max()
    return np.asarray((x - lo) / (hi - lo))


def _fit_power(
    u: np.ndarray, mapping: Callable[[np.ndarray], np.ndarray], target: float
) -> np.ndarray:
    """Bisect the exponent g so mean(mapping(u**g)) hits target; min and max stay attained."""
    lo, hi = -6.0, 6.0  # log2 of g
    probe = u[::8]  # the mean of every 8th value is close enough and 8x cheaper
    for _ in range(30):
        mid = (lo + hi) / 2
        if mapping(probe ** (2.0**mid)).mean() > target:
            lo = mid  # a larger exponent pulls values towards the low end
        else:
            hi = mid
    return np.asarray(mapping(u ** (2.0 ** ((lo + hi) / 2))))


def _timestamps(rng: np.random.Generator, p: _Profile, n: int) -> np.ndarray:
    gaps = rng.uniform(0.6, 1.4, n - 1)  # jitter around the mean interval
    t = np.concatenate(([0.0], np.cumsum(gaps)))
    ts: np.ndarray = p.t_start + (p.t_end - p.t_start) * (t / t[-1])
    ts[-1] = p.t_end
    return ts


def _sensor(rng: np.random.Generator, p: _Profile) -> dict[str, np.ndarray]:
    s = p.sensor
    n = s.rows - p.duplicates
    ts = _timestamps(rng, p, n)
    day = 2 * np.pi * (ts / _DAY) - 2.2  # warmest in the UTC afternoon
    warm = p.diurnal * np.sin(day) + _smooth(rng, n, 400) + 0.3 * _smooth(rng, n, 15)

    glitch = np.zeros(n, dtype=bool)
    glitch[rng.choice(np.arange(1, n - 1), p.glitches, replace=False)] = True
    normal = ~glitch

    # Temperature and humidity: ranges exact, means as published (glitches included).
    _, t_max, t_mean = s.temp
    h_min, h_max, h_mean = s.humidity
    g_hum = np.round(rng.uniform(h_min, h_min + 1.5, p.glitches), 1)
    if p.glitches:
        g_hum[0] = h_min
    target_t = (t_mean * n - 0.0 * p.glitches) / normal.sum()
    target_h = (h_mean * n - g_hum.sum()) / normal.sum()
    u_t = _unit(warm[normal])
    u_h = _unit(-0.7 * warm[normal] + _smooth(rng, int(normal.sum()), 200))
    temp = np.zeros(n)
    hum = np.zeros(n)
    lo_t = p.temp_floor
    lo_h = p.humidity_floor
    temp[normal] = _fit_power(u_t, lambda v: lo_t + (t_max - lo_t) * v, target_t)
    hum[normal] = _fit_power(u_h, lambda v: lo_h + (h_max - lo_h) * v, target_h)
    temp[glitch] = 0.0
    hum[glitch] = g_hum
    temp, hum = np.round(temp, 1), np.round(hum, 1)
    if p.float32:  # this board logged float32 values, widened to double in the CSV
        temp = temp.astype(np.float32).astype(np.float64)
        hum = hum.astype(np.float32).astype(np.float64)

    # Gas: co wanders in log space, mostly low with peaks; lpg and smoke follow it.
    c_lo, c_hi = s.co
    u_c = _unit(_smooth(rng, n, 120) + 0.5 * _smooth(rng, n, 8) + 0.2 * np.sin(day))
    co = _fit_power(u_c, lambda v: c_lo * (c_hi / c_lo) ** v, p.co_mean)
    lpg = pub.LPG_RANGE[0] * (co / _CO_LO) ** _LPG_EXP
    smoke = pub.SMOKE_RANGE[0] * (co / _CO_LO) ** _SMOKE_EXP

    # Light: on for the constant board, else an evening window of 20-52 min each day.
    if p.light_constant:
        light = np.ones(n, dtype=bool)
    else:
        days = np.floor(ts / _DAY)
        first = days[0]
        n_days = int(days[-1] - first) + 1
        start = rng.uniform(19 * 3600, 22 * 3600, n_days)
        length = rng.uniform(20 * 60, 52 * 60, n_days)
        k = (days - first).astype(int)
        sec = ts - days * _DAY
        light = (sec >= start[k]) & (sec < start[k] + length[k])
    # Motion: short bursts of ~5 readings, about 1% of readings overall.
    starts = (rng.random(n) < pub.MOTION_FRACTION / 5).astype(float)
    motion = np.convolve(starts, np.ones(5), mode="full")[:n] > 0

    cols = {
        "ts": ts,
        "co": co,
        "humidity": hum,
        "light": light,
        "lpg": lpg,
        "motion": motion,
        "smoke": smoke,
        "temp": temp,
    }
    # Exact duplicate rows: a reading logged twice in a row.
    repeats = np.ones(n, dtype=int)
    repeats[rng.choice(np.arange(n), p.duplicates, replace=False)] = 2
    return {k: np.repeat(v, repeats) for k, v in cols.items()}


def _java_double(text: str) -> str:
    """'1594512094.3859746' -> '1.5945120943859746E9' (Java's Double.toString style)."""
    if text[10:11] == "." and text[-1] != "0":  # the usual 10-digit epoch with a fraction
        return f"{text[0]}.{text[1:10]}{text[11:]}E9"
    whole, _, frac = text.partition(".")
    digits = (whole[1:] + frac).rstrip("0") or "0"
    return f"{whole[0]}.{digits}E{len(whole) - 1}"


def generate(seed: int = DEFAULT_SEED) -> bytes:
    """The replica as CSV bytes in the published format; byte-identical for a given seed."""
    rng = np.random.default_rng(seed)
    parts = [_sensor(rng, p) for p in _PROFILES]
    ts = np.concatenate([c["ts"] for c in parts])
    order = np.argsort(ts, kind="stable")  # interleaved in time order, as published
    device = np.concatenate([np.full(len(c["ts"]), i, dtype=np.int8) for i, c in enumerate(parts)])[
        order
    ]

    def col(name: str) -> list[str]:
        values = np.concatenate([c[name] for c in parts])[order]
        if values.dtype == bool:
            return list(np.where(values, "true", "false").tolist())
        if name in ("temp", "humidity"):  # few distinct values: format each once
            distinct, inverse = np.unique(values, return_inverse=True)
            return list(
                np.array(list(map(repr, distinct.tolist())), dtype=object)[inverse].tolist()
            )
        return list(map(repr, values.tolist()))

    macs = [p.sensor.mac for p in _PROFILES]
    columns = {
        "ts": list(map(_java_double, col("ts"))),
        "device": [macs[i] for i in device.tolist()],
        **{c: col(c) for c in COLUMNS if c not in ("ts", "device")},
    }
    line = ",".join(['"%s"'] * len(COLUMNS)) + "\n"
    body = "".join(map(line.__mod__, zip(*(columns[c] for c in COLUMNS))))
    return pub.HEADER_LINE + body.encode("ascii")


def marker_path(path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(path)}{MARKER_SUFFIX}")


def write_replica(path: str | os.PathLike[str], seed: int = DEFAULT_SEED) -> str:
    """Write the replica and its marker; returns the sha256 of the CSV."""
    data = generate(seed)
    digest = hashlib.sha256(data).hexdigest()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(Path(path), data)
    marker = {"generator": "edge-dataset sample", "seed": seed, "sha256": digest, "synthetic": True}
    write_atomic(marker_path(path), (json.dumps(marker, indent=2, sort_keys=True) + "\n").encode())
    return digest


def marker_digest(path: str | os.PathLike[str]) -> str | None:
    """The sha256 recorded by `sample` next to path, or None without a readable marker."""
    try:
        data = json.loads(marker_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    digest = data.get("sha256") if isinstance(data, dict) else None
    return digest if isinstance(digest, str) else None
