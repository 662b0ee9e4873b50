"""edge-telemetry: work with the telemetry store from the controller.

    edge-telemetry export --store URL --device ID [--since T] [--until T]
                          [--format csv|parquet] --out FILE

T is ISO 8601 (2026-11-29T12:00:00Z; without an offset it means UTC) or Unix seconds. The range
is [since, until) on the device's publish time; the default is everything stored. --store
defaults to $EDGE_TELEMETRY_STORE, which keeps a PostgreSQL password off the command line
(or use ~/.pgpass / PGPASSWORD, which libpq reads).

Exit codes: 0 exported, 1 the store or the output failed, 2 bad input (usage, a time, the
format or its missing library).
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import NoReturn, Optional

from edge_agent.protocol import MAC_RE

from . import StoreError, open_store, redact
from .model import TS_MAX, TS_MIN

PROG = "edge-telemetry"
STORE_ENV = "EDGE_TELEMETRY_STORE"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        raise UsageError(f"{message} (see {self.prog} --help)")


def parse_time(text: str, option: str) -> float:
    """ISO 8601 (naive means UTC) or Unix seconds -> Unix seconds; ValueError names option."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"{option} {text!r} is not a finite time")
        return seconds
    iso = value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value  # 3.9/3.10 lack "Z"
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise ValueError(
            f"{option} {text!r} is neither ISO 8601 (2026-11-29T12:00:00Z) nor Unix seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _iso(ts: float) -> str:
    if ts <= TS_MIN:
        return "start"
    if ts >= TS_MAX:
        return "end"
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _parser() -> _Parser:
    parser = _Parser(prog=PROG, description="Work with the edge-fleet telemetry store.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    export = commands.add_parser(
        "export",
        prog=f"{PROG} export",
        help="one device's readings as CSV in the dataset's format, or parquet",
        description="Export one device's readings in the dataset's format (replayable).",
    )
    export.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV),
        help=f"sqlite:///path/file.db or postgresql://... (default ${STORE_ENV})",
    )
    export.add_argument("--device", required=True, help="device ID (its MAC, 0a:ed:9e:...)")
    export.add_argument("--since", help="start, inclusive: ISO 8601 or Unix seconds")
    export.add_argument("--until", help="end, exclusive: ISO 8601 or Unix seconds")
    export.add_argument("--format", default="csv", help="csv (default) or parquet")
    export.add_argument("--out", required=True, help="output file; - for stdout (csv)")
    return parser


def _export(args: argparse.Namespace) -> int:
    # Imported here: pandas is controller-side and slow to import.
    from .export import ExportError, check_format, dataset_frame, write

    if not args.store:
        raise UsageError(f"--store is required (or set ${STORE_ENV})")
    try:
        since = parse_time(args.since, "--since") if args.since is not None else TS_MIN
        until = parse_time(args.until, "--until") if args.until is not None else TS_MAX
        check_format(args.format)
    except (ValueError, ExportError) as e:
        raise UsageError(str(e)) from None
    if since >= until:
        raise UsageError(f"--since ({_iso(since)}) must be before --until ({_iso(until)})")
    device = args.device.strip()
    if MAC_RE.match(device.lower()):
        device = device.lower()  # device IDs are stored as the agents send them: lower case

    try:
        with open_store(args.store, retention_days=None, create=False) as store:
            frame = dataset_frame(store.read_range(device, since, until))
        write(frame, args.format, args.out)
    except ExportError as e:
        raise UsageError(str(e)) from None
    where = "stdout" if args.out == "-" else args.out
    print(
        f"{PROG}: {len(frame)} readings of {device} [{_iso(since)}, {_iso(until)}) "
        f"from {redact(args.store)} -> {where}",
        file=sys.stderr,
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = _parser().parse_args(argv)
        return _export(args)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except StoreError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except _runtime_errors() as e:  # the database's or the file system's own errors
        lines = str(e).strip().splitlines()
        print(f"{PROG}: error: {type(e).__name__}: {lines[0] if lines else ''}", file=sys.stderr)
        return 1


def _runtime_errors() -> tuple[type[Exception], ...]:
    errors: tuple[type[Exception], ...] = (OSError, sqlite3.Error)
    psycopg = sys.modules.get("psycopg")  # only loaded when a PostgreSQL store was opened
    if psycopg is not None:
        errors += (psycopg.Error,)
    return errors


if __name__ == "__main__":
    sys.exit(main())
