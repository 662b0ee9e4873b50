"""Reader for the published sensor CSV format (stdlib only; shared with edge_dataset).

Readings are stored column-wise in compact arrays (about 50 bytes per row) instead of one
Python object per row: a 135k-row slice then costs ~7 MB instead of ~60 MB.
"""

from __future__ import annotations

import csv
import math
from array import array
from collections.abc import Sequence
from typing import NamedTuple

from .config import ConfigError

COLUMNS = ("ts", "device", "co", "humidity", "light", "lpg", "motion", "smoke", "temp")
FLOAT_COLUMNS = ("co", "humidity", "lpg", "smoke", "temp")
_LIGHT, _MOTION = 1, 2  # bits in Slice.flags


class Reading(NamedTuple):
    ts: float
    device: str
    co: float
    humidity: float
    light: bool
    lpg: float
    motion: bool
    smoke: float
    temp: float


def _float(value: str, column: str) -> float:
    number = float(value)  # accepts "1.5945120943859746E9"
    if not math.isfinite(number):
        raise ValueError(f"{column} is not finite: {value!r}")
    return number


def _bool(value: str, column: str) -> bool:
    text = value.strip().lower()
    if text == "true":
        return True
    if text == "false":
        return False
    raise ValueError(f"{column} is not true/false: {value!r}")


def parse_row(row: Sequence[str]) -> Reading:
    """Parse one CSV record in COLUMNS order; raises ValueError if it is malformed."""
    if len(row) != len(COLUMNS):
        raise ValueError(f"expected {len(COLUMNS)} fields, got {len(row)}")
    ts, device, co, humidity, light, lpg, motion, smoke, temp = row
    device = device.strip()
    if not device:
        raise ValueError("device is empty")
    return Reading(
        ts=_float(ts, "ts"),
        device=device,
        co=_float(co, "co"),
        humidity=_float(humidity, "humidity"),
        light=_bool(light, "light"),
        lpg=_float(lpg, "lpg"),
        motion=_bool(motion, "motion"),
        smoke=_float(smoke, "smoke"),
        temp=_float(temp, "temp"),
    )


class Slice:
    """Column-wise readings of one slice file, indexed 0..len-1 in file order."""

    def __init__(self) -> None:
        self.ts = array("d")
        self.co = array("d")
        self.humidity = array("d")
        self.lpg = array("d")
        self.smoke = array("d")
        self.temp = array("d")
        self.flags = bytearray()
        self.device_index = array("H")
        self.devices: list[str] = []
        self.skipped = 0
        self._device_ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ts)

    def append(self, r: Reading) -> None:
        index = self._device_ids.get(r.device)
        if index is None:
            if len(self.devices) >= 65535:
                raise ValueError("too many distinct devices")
            index = self._device_ids[r.device] = len(self.devices)
            self.devices.append(r.device)
        self.ts.append(r.ts)
        self.co.append(r.co)
        self.humidity.append(r.humidity)
        self.lpg.append(r.lpg)
        self.smoke.append(r.smoke)
        self.temp.append(r.temp)
        self.flags.append((_LIGHT if r.light else 0) | (_MOTION if r.motion else 0))
        self.device_index.append(index)

    def __getitem__(self, i: int) -> Reading:
        flags = self.flags[i]
        return Reading(
            ts=self.ts[i],
            device=self.devices[self.device_index[i]],
            co=self.co[i],
            humidity=self.humidity[i],
            light=bool(flags & _LIGHT),
            lpg=self.lpg[i],
            motion=bool(flags & _MOTION),
            smoke=self.smoke[i],
            temp=self.temp[i],
        )


def read_slice(path: str) -> Slice:
    """Read a slice; bad rows are skipped and counted, zero valid rows is a ConfigError."""
    result = Slice()
    try:
        # errors="replace": a row with broken bytes becomes one bad row, not a crash.
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ConfigError("DATASET_PATH", f"{path} is empty")
            names = [h.strip().lstrip("\ufeff") for h in header]
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise ConfigError(
                    "DATASET_PATH",
                    f"{path} header lacks {', '.join(missing)} (expected {','.join(COLUMNS)})",
                )
            order = [names.index(c) for c in COLUMNS]
            width = len(names)
            for row in reader:
                if not row:
                    continue  # blank line
                try:
                    if len(row) != width:
                        raise ValueError("wrong number of fields")
                    result.append(parse_row([row[i] for i in order]))
                except ValueError:
                    result.skipped += 1
    except OSError as e:
        raise ConfigError("DATASET_PATH", f"cannot read {path}: {e.strerror or e}") from None
    except csv.Error as e:
        raise ConfigError("DATASET_PATH", f"{path} is not valid CSV: {e}") from None
    if not len(result):
        raise ConfigError("DATASET_PATH", f"{path} has no valid rows ({result.skipped} skipped)")
    return result
