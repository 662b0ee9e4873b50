"""Export one device's readings in the dataset's own format (controller side: pandas).

The columns are edge_agent.protocol.COLUMNS: `ts` is the replayed sensor's timestamp and
`device` its MAC, so an export can be sliced and replayed by the fleet again. The CSV is
written as the published file is (../shared/dataset.md): every value quoted, floats as Java's
Double.toString writes them ("1.5945120943859746E9", "22.7"), booleans "true"/"false". A
reading without a `source` (an agent that did not send one) falls back to its device's own
publish ts and device ID, which is a MAC as well.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import sys
import tempfile
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import TextIO

import pandas as pd
from edge_agent.protocol import BOOL_COLUMNS, COLUMNS

from .model import TelemetryRow

FORMATS = ("csv", "parquet")


class ExportError(Exception):
    """Worded for the user; the CLI prints it as one line."""


def java_double(value: float) -> str:
    """A float as Java's Double.toString writes it, as the published file's `ts` column is:
    plain for 1e-3 <= |x| < 1e7, else computerized scientific notation ("1.5945120943859746E9").
    The digits are Python's shortest round-trip ones, so parsing gives back the same float."""
    if value == 0:
        return "-0.0" if str(value).startswith("-") else "0.0"
    if 1e-3 <= abs(value) < 1e7:
        text = repr(value)
        return text if "." in text else text + ".0"
    sign, digits, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)  # finite: the store holds no NaN or infinity
    text = "".join(map(str, digits)).rstrip("0") or "0"
    power = len(digits) + exponent - 1
    mantissa = text[0] + "." + (text[1:] or "0")
    return f"{'-' if sign else ''}{mantissa}E{power}"


def dataset_frame(rows: Iterable[TelemetryRow]) -> pd.DataFrame:
    """Readings as a DataFrame with the dataset's columns, in the order given."""
    records = [
        (
            r.ts if r.source_ts is None else r.source_ts,
            r.device_id if r.source_device is None else r.source_device,
            r.co,
            r.humidity,
            r.light,
            r.lpg,
            r.motion,
            r.smoke,
            r.temp,
        )
        for r in rows
    ]
    # Annotated: under mypy's python_version 3.10 pandas-stubs 3 resolve pandas to Any.
    frame: pd.DataFrame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    for column in BOOL_COLUMNS:
        frame[column] = frame[column].astype(bool)
    return frame


def _csv_text(frame: pd.DataFrame) -> pd.DataFrame:
    text: pd.DataFrame = pd.DataFrame(index=frame.index)
    for column in COLUMNS:
        values = frame[column]
        if column == "ts":
            text[column] = [java_double(float(v)) for v in values]
        elif column == "device":
            text[column] = values.astype(str)
        elif column in BOOL_COLUMNS:
            text[column] = ["true" if v else "false" for v in values]
        else:
            text[column] = [java_double(float(v)) for v in values]
    return text


def check_format(fmt: str) -> None:
    """Fail before any work when the format cannot be written here."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r} (csv or parquet)")
    if fmt == "parquet" and importlib.util.find_spec("pyarrow") is None:
        raise ExportError("--format parquet needs the pyarrow package, which is not installed")


def write(frame: pd.DataFrame, fmt: str, out: str) -> None:
    """Write frame to out ('-': stdout, csv only), atomically: a failed export leaves no file."""
    check_format(fmt)
    if out == "-":
        if fmt != "csv":
            raise ExportError("only csv can go to stdout (--out -)")
        write_csv(frame, sys.stdout)
        return
    target = Path(out)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        if fmt == "csv":
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                write_csv(frame, f)
        else:
            frame.to_parquet(tmp, engine="pyarrow", index=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(frame: pd.DataFrame, f: TextIO) -> None:
    _csv_text(frame).to_csv(f, index=False, quoting=csv.QUOTE_ALL, lineterminator="\n")
