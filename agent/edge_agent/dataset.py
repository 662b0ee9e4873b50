"""Reader for the published sensor CSV format (stdlib only; shared with edge_dataset).

A slice is validated once at startup and then kept as the byte offset of every valid row
(8 bytes per row); a row is re-read from the open file when it is published. Holding parsed
columns instead would cost ~50 bytes per row: 7 MB for one sensor's 135k-row history, a third
of the agent's 20 MB RSS budget.
"""

from __future__ import annotations

import csv
import math
from array import array
from collections.abc import Sequence
from typing import BinaryIO, NamedTuple

from .config import ConfigError
from .protocol import COLUMNS


class Reading(NamedTuple):  # fields in COLUMNS order (a unit test checks it)
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


def _split(line: bytes) -> list[str]:
    # errors="replace": a row with broken bytes becomes one bad row, not a crash.
    try:
        return next(csv.reader([line.decode("utf-8", errors="replace")]), [])
    except csv.Error as e:  # e.g. a NUL byte
        raise ValueError(str(e)) from None


class Slice:
    """Valid rows of one slice file, indexed 0..len-1 in file order, read on demand."""

    def __init__(self, path: str, f: BinaryIO, order: list[int], width: int) -> None:
        self.path = path
        self.offsets = array("Q")
        self.skipped = 0
        self._file = f
        self._order = order
        self._width = width

    def __len__(self) -> int:
        return len(self.offsets)

    def parse(self, line: bytes) -> Reading:
        row = _split(line)
        if len(row) != self._width:
            raise ValueError(f"expected {self._width} fields, got {len(row)}")
        return parse_row([row[i] for i in self._order])

    def __getitem__(self, i: int) -> Reading:
        self._file.seek(self.offsets[i])
        try:
            return self.parse(self._file.readline())
        except ValueError as e:
            # Deployments replace slices atomically (new inode), which never gets here.
            raise RuntimeError(f"{self.path} changed under the agent (row {i}: {e})") from None

    def ts_at(self, i: int) -> float:
        return self[i].ts

    def close(self) -> None:
        self._file.close()


def read_slice(path: str) -> Slice:
    """Validate a slice: bad rows are skipped and counted, zero valid rows is a ConfigError."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - stays open for the Slice's lifetime
    except OSError as e:
        raise ConfigError("DATASET_PATH", f"cannot read {path}: {e.strerror or e}") from None
    try:
        return _scan(path, f)
    except BaseException:
        f.close()
        raise


def _scan(path: str, f: BinaryIO) -> Slice:
    try:
        header_line = f.readline()
        if not header_line.strip():
            raise ConfigError("DATASET_PATH", f"{path} is empty")
        names = [h.strip().lstrip("\ufeff") for h in _split(header_line)]
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise ConfigError(
                "DATASET_PATH",
                f"{path} header lacks {', '.join(missing)} (expected {','.join(COLUMNS)})",
            )
        result = Slice(path, f, [names.index(c) for c in COLUMNS], len(names))
        offset = len(header_line)
        # Line by line, because rows are re-read later with readline(); the published format
        # has no multi-line records (a record split over lines counts as bad rows).
        for line in iter(f.readline, b""):
            if line.strip():  # blank lines are not rows
                try:
                    result.parse(line)
                    result.offsets.append(offset)
                except ValueError:
                    result.skipped += 1
            offset += len(line)
    except OSError as e:
        raise ConfigError("DATASET_PATH", f"cannot read {path}: {e.strerror or e}") from None
    if not len(result):
        raise ConfigError("DATASET_PATH", f"{path} has no valid rows ({result.skipped} skipped)")
    return result
