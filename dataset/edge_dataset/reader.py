"""Read and validate a dataset file in the published format.

The fast path reads the file once, parses numbers with pandas' C reader and locates each data line
with numpy (no per-line Python objects), so slices copy the source text exactly. The sha256 (only
when the replica marker needs it) runs in a thread beside the parse. Only when something is wrong
does a slower pass read every value as text to name the first bad column and its line number.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
from edge_agent.protocol import BOOL_COLUMNS, COLUMNS, FLOAT_COLUMNS, MAC_PATTERN

from .replica import marker_digest

_MAC = re.compile(MAC_PATTERN, re.IGNORECASE)  # the published file is lower case; be lenient
_FIELDS = re.compile(r"Expected (\d+) fields in line (\d+), saw (\d+)")
_DTYPES = {c: "float64" for c in FLOAT_COLUMNS} | {"device": "category"}
_QUOTES_PER_LINE = 2 * len(COLUMNS)


class DatasetError(Exception):
    """A problem with a dataset file, worded for the user; str() is '<path>: <what>'."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A validated file: its data lines (published quoting) and their parsed keys.

    Line i is data[starts[i]:ends[i]] (no newline); every line is followed by one newline and the
    next line starts right after it, so the data lines are data[starts[0]:] contiguously.
    """

    path: str
    data: bytes
    starts: np.ndarray  # int64 per line
    ends: np.ndarray  # int64 per line, exclusive, at the line's newline
    ts: np.ndarray  # float64 per line
    codes: np.ndarray  # index into devices per line
    devices: tuple[str, ...]  # distinct MACs, sorted
    quoted: bool  # False: the source did not quote every value; lines were re-quoted
    sha256: str | None  # of the file's bytes, when it was computed
    synthetic: bool  # the replica marker written by `sample` matches these bytes

    @property
    def rows(self) -> int:
        return len(self.starts)

    def line(self, i: int) -> bytes:
        return self.data[int(self.starts[i]) : int(self.ends[i])]

    @cached_property
    def lines(self) -> list[bytes]:
        """Every data line as bytes (builds one object per line: the slicer avoids it)."""
        return self.data[int(self.starts[0]) :].split(b"\n")[:-1]

    def rows_per_device(self) -> dict[str, int]:
        counts = np.bincount(self.codes, minlength=len(self.devices))
        return dict(zip(self.devices, counts.tolist()))


def _line_bounds(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the data lines of raw, which ends with exactly one newline."""
    newlines = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == 0x0A)
    return newlines[:-1] + 1, newlines[1:]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse(raw: bytes) -> pd.DataFrame:
    return pd.read_csv(
        io.BytesIO(raw),
        dtype=_DTYPES,
        keep_default_na=False,
        na_values=[""],
        skip_blank_lines=False,
        engine="c",
    )


def load(path: str | Path, *, want_sha256: bool = False) -> Dataset:
    """Read and validate path; raises DatasetError naming the first problem."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DatasetError(name, f"cannot read: {e.strerror or e}") from None
    marker = marker_digest(path)
    # hashlib and pandas' tokenizer release the GIL: hash and parse overlap on a second core.
    with ThreadPoolExecutor(max_workers=2) as pool:
        hashing = pool.submit(_sha256, raw) if (want_sha256 or marker) else None
        try:
            ds = _validate(name, raw, pool)
        finally:
            digest = hashing.result() if hashing else None
    return Dataset(**ds, sha256=digest, synthetic=marker is not None and marker == digest)


def _validate(name: str, raw: bytes, pool: ThreadPoolExecutor) -> dict[str, Any]:
    if not raw or raw.isspace():  # isspace stops at the first other byte; strip() would copy
        raise DatasetError(name, "file is empty")
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    if b"\r" in raw:
        raw = raw.replace(b"\r\n", b"\n")  # a lone \r is left for the line check to reject
    if not raw.endswith(b"\n") or raw.endswith(b"\n\n"):
        raw = raw.rstrip(b"\n") + b"\n"  # tolerate a missing or doubled final newline
    header_end = raw.index(b"\n")
    _check_header(name, raw[:header_end])
    if len(raw) == header_end + 1:
        raise DatasetError(name, "has a header but no data rows")

    parsing = pool.submit(_parse, raw)
    starts, ends = _line_bounds(raw)  # numpy, beside the parse
    quotes = int(np.count_nonzero(np.frombuffer(raw, dtype=np.uint8, offset=header_end) == 0x22))
    try:
        frame = parsing.result()
    except pd.errors.ParserError as e:
        raise DatasetError(name, _field_count_message(str(e))) from None
    except (ValueError, TypeError):
        frame = None
    if frame is None or not _clean(frame):
        _raise_first_bad_value(name, raw, starts, ends)
    if len(frame) != len(starts):
        raise DatasetError(
            name, f"{len(starts)} data lines but {len(frame)} records: a quoted value spans lines"
        )

    quoted = quotes == _QUOTES_PER_LINE * len(starts)
    if not quoted:  # e.g. re-saved by a spreadsheet: quote values as published, text unchanged
        text = pd.read_csv(io.BytesIO(raw), dtype=str, na_filter=False, engine="c")
        joined = ['"' + '","'.join(row) + '"\n' for row in text.itertuples(index=False)]
        raw = raw[: header_end + 1] + "".join(joined).encode()
        starts, ends = _line_bounds(raw)

    device = frame["device"].cat
    return {
        "path": name,
        "data": raw,
        "starts": starts,
        "ends": ends,
        "ts": frame["ts"].to_numpy(),
        "codes": device.codes.to_numpy().astype(np.intp),
        "devices": tuple(device.categories.tolist()),
        "quoted": quoted,
    }


def _check_header(name: str, line: bytes) -> None:
    text = line.decode("utf-8", errors="replace")
    names = [n.strip() for n in next(csv.reader([text]))]
    missing = [c for c in COLUMNS if c not in names]
    extra = [n for n in names if n not in COLUMNS]
    if missing:
        plural = "s" if len(missing) > 1 else ""
        raise DatasetError(name, f"header lacks column{plural} {', '.join(map(repr, missing))}")
    if extra:
        plural = "s" if len(extra) > 1 else ""
        listed = ", ".join(map(repr, extra))
        raise DatasetError(name, f"header has unexpected column{plural} {listed}")
    if names != list(COLUMNS):
        raise DatasetError(
            name, f"header columns are {','.join(names)}; expected {','.join(COLUMNS)}"
        )


def _field_count_message(message: str) -> str:
    m = _FIELDS.search(message)
    if m:
        return f"line {m[2]}: {m[3]} fields, expected {m[1]}"
    return f"not valid CSV: {message.splitlines()[0] if message else 'parse error'}"


def _clean(frame: pd.DataFrame) -> bool:
    floats = frame[list(FLOAT_COLUMNS)].to_numpy()
    if not np.isfinite(floats).all():
        return False
    if any(frame[c].dtype != bool for c in BOOL_COLUMNS):
        return False
    device = frame["device"].cat
    if (device.codes.to_numpy() < 0).any():
        return False
    return all(_MAC.fullmatch(mac) for mac in device.categories)


def _raise_first_bad_value(name: str, raw: bytes, starts: np.ndarray, ends: np.ndarray) -> NoReturn:
    """Read every value as text and raise for the first bad one, naming column and line."""
    try:
        text = pd.read_csv(
            io.BytesIO(raw), dtype=str, na_filter=False, skip_blank_lines=False, engine="c"
        )
    except pd.errors.ParserError as e:
        raise DatasetError(name, _field_count_message(str(e))) from None
    first: tuple[int, int, str] | None = None  # (row, column position, message)
    for position, column in enumerate(COLUMNS):
        values = text[column]
        bad, why = _bad_values(column, values)
        rows = np.flatnonzero(bad)
        if rows.size and (first is None or rows[0] < first[0]):
            row = int(rows[0])
            first = (row, position, why(values.iloc[row]))
    if first is None:
        raise DatasetError(name, "cannot parse the file (no single bad value found)")
    row, _, reason = first
    line_no = row + 2  # the header is line 1
    line = raw[int(starts[row]) : int(ends[row])] if row < len(starts) else b""
    fields = next(csv.reader([line.decode("utf-8", errors="replace")]), [])
    if len(fields) != len(COLUMNS):
        expected = len(COLUMNS)
        raise DatasetError(name, f"line {line_no}: {len(fields)} fields, expected {expected}")
    raise DatasetError(name, f"line {line_no}: {reason}")


def _bad_values(column: str, values: pd.Series[str]) -> tuple[np.ndarray, Callable[[str], str]]:
    """A mask of bad values in one text column and a function describing one of them."""
    text = values.to_numpy(dtype=object)
    empty = np.array([not v.strip() for v in text])

    def describe(kind: str) -> Callable[[str], str]:
        def text(v: str) -> str:
            return f"column '{column}' is " + (f"{v!r} {kind}" if v.strip() else "empty")

        return text

    if column in BOOL_COLUMNS:
        ok = np.isin(np.char.lower(text.astype(str)), ["true", "false"])
        return ~ok | empty, describe("not true or false")
    if column == "device":
        ok = np.array([_MAC.fullmatch(v.strip()) is not None for v in text])
        return ~ok | empty, describe("not a MAC address")
    number = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return ~np.isfinite(number) | empty, describe("not a finite number")
