"""edge-anomaly score FILE.csv: run the streaming detectors over a file, print flagged rows.

Two formats:
- the dataset's (edge_agent.protocol.COLUMNS: ts, device, co, humidity, light, lpg, motion,
  smoke, temp; any column order; ts in epoch seconds, "1.5945120943859746E9" too): every
  device's rows in file order, through one AnomalyEngine, as the consumer would see them;
- any CSV with a header, one sensor: --time COL --value COL (time: epoch seconds or ISO 8601;
  a value column named like a dataset sensor gets that sensor's limits). A file whose header
  has `timestamp` and `value` and not the dataset's columns (the Numenta Anomaly Benchmark's
  format, `2015-09-01 11:25:00,58`) is read that way without options.

Each anomaly names the file line of the reading it flags (a spike: its first reading; stuck
and drift: where they are recognised; a dropout: the last reading before the silence, found
from the gap in the timestamps since nothing ticks offline); a seq in its detail is a line
too. Output is one line per anomaly, or JSON Lines with --json. A bad file stops with one
error naming file, line and column, before anything is printed: exit 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from typing import Optional, TextIO

from edge_agent.protocol import BOOL_FIELDS, COLUMNS, NUMERIC_FIELDS

from .engine import AnomalyEngine, EngineConfig
from .record import Anomaly

PROG = "edge-anomaly"
EXIT_OK, EXIT_USAGE = 0, 2
_GAS = ("co", "lpg", "smoke")


class InputError(Exception):
    """A problem with the input file, worded for the user: '<file>:<line>: <what>'."""


def _number(text: str, where: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{where}: column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{where}: column {column!r}: {text!r} is not a finite number")
    return value


def _flag(text: str, where: str, column: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false"):
        raise InputError(f"{where}: column {column!r}: {text!r} is not true or false")
    return value == "true"


def _time(text: str, where: str, column: str) -> float:
    """Epoch seconds (plain or scientific notation) or an ISO 8601 time (UTC if naive)."""
    try:
        return _number(text, where, column)
    except InputError:
        pass
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"{where}: column {column!r}: {text!r} is neither epoch seconds nor an ISO 8601 time"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def _rows(path: str, f: TextIO, wanted: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """(line, fields in `wanted` order) for every non-blank record; checks the header."""
    reader = csv.reader(f)
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: the file is empty")
        names = [h.strip().lstrip("\ufeff") for h in header]
        missing = [c for c in wanted if c not in names]
        if missing:
            raise InputError(
                f"{path}:1: header lacks {', '.join(repr(c) for c in missing)} "
                f"(it has {', '.join(repr(n) for n in names)})"
            )
        index = [names.index(c) for c in wanted]
        for row in reader:
            if not row or not any(field.strip() for field in row):
                continue
            if len(row) != len(names):
                raise InputError(
                    f"{path}:{reader.line_num}: expected {len(names)} fields, got {len(row)}"
                )
            yield reader.line_num, [row[i] for i in index]
    except csv.Error as e:
        raise InputError(f"{path}:{reader.line_num}: not CSV: {e}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def score_dataset(path: str, f: TextIO, engine: AnomalyEngine) -> tuple[list[Anomaly], int]:
    """The dataset format: (anomalies, rows). seq = the row's line."""
    found: list[Anomaly] = []
    rows = 0
    for line, fields in _rows(path, f, COLUMNS):
        where = f"{path}:{line}"
        values = dict(zip(COLUMNS, fields))
        ts = _number(values["ts"], where, "ts")
        device = values["device"].strip()
        if not device:
            raise InputError(f"{where}: column 'device': empty")
        data: dict[str, object] = {c: _number(values[c], where, c) for c in NUMERIC_FIELDS}
        data.update((c, _flag(values[c], where, c)) for c in BOOL_FIELDS)
        found += engine.observe(device, line, ts, data, now=ts)
        rows += 1
    return found, rows


def score_column(
    path: str, f: TextIO, engine: AnomalyEngine, time_col: str, value_col: str
) -> tuple[list[Anomaly], int]:
    """One time and one value column: (anomalies, rows)."""
    found: list[Anomaly] = []
    rows = 0
    for line, (t, v) in _rows(path, f, (time_col, value_col)):
        where = f"{path}:{line}"
        ts = _time(t, where, time_col)
        value = _number(v, where, value_col)
        found += engine.observe(path, line, ts, {value_col: value}, now=ts)
        rows += 1
    return found, rows


def column_config(col: str) -> EngineConfig:
    """The engine for a one-sensor file (shared with bench/nab_eval.py)."""
    return EngineConfig(sensors=(col,), log_sensors=(col,) if col in _GAS else (), chips=())


def _header(path: str) -> list[str]:
    """The file's header names ([] if it cannot be read: the real read reports why)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            first = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [h.strip().lstrip("\ufeff") for h in first]


def _iso(ts: float) -> str:
    try:
        return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")
    except (OverflowError, OSError, ValueError):
        return f"{ts:g}"


def _text(a: Anomaly, device: bool) -> str:
    who = f"{a.device_id}  " if device else ""
    return (
        f"line {a.seq}  {who}{a.sensor}  {a.kind}  {_iso(a.ts)}  value {a.value:g}  "
        f"score {a.score:.1f}  {a.detail}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Score sensor data with the fleet's streaming anomaly detectors."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser(
        "score",
        help="print the anomalous rows of a CSV file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("file", help="CSV in the dataset's format, or see --time/--value")
    score.add_argument("--time", metavar="COL", help="time column of a one-sensor file")
    score.add_argument("--value", metavar="COL", help="value column of a one-sensor file")
    score.add_argument("--json", action="store_true", help="JSON Lines, one anomaly a line")
    score.add_argument(
        "--multivariate", action="store_true", help="add HalfSpaceTrees (needs river)"
    )
    return parser


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    if (args.time is None) != (args.value is None):
        parser.error("--time and --value go together")
    if args.time is None:
        names = _header(args.file)
        if "timestamp" in names and "value" in names and "device" not in names:
            args.time, args.value = "timestamp", "value"  # NAB's format
    config = column_config(args.value) if args.time is not None else EngineConfig()
    config = config._replace(multivariate=args.multivariate)
    try:
        engine = AnomalyEngine(config)
    except RuntimeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with open(args.file, encoding="utf-8", newline="") as f:
            if args.time is not None:
                found, rows = score_column(args.file, f, engine, args.time, args.value)
            else:
                found, rows = score_dataset(args.file, f, engine)
    except OSError as e:
        print(f"{PROG}: error: {args.file}: cannot read: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except InputError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    found.sort(key=lambda a: (a.seq, a.kind, a.sensor))
    if args.json:
        for a in found:
            out.write(json.dumps({**a.to_dict(), "line": a.seq}, separators=(",", ":")) + "\n")
        return EXIT_OK
    for a in found:
        out.write(_text(a, device=args.time is None) + "\n")
    kinds = Counter(a.kind for a in found)
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
    out.write(
        f"{len(found)} anomalies in {rows:,} rows of {len(engine)} device(s)"
        + (f": {by_kind}" if by_kind else "")
        + "\n"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
