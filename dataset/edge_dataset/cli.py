"""edge-dataset: validate the sensor dataset, cut per-device slices, generate the replica."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from . import published as pub
from .reader import Dataset, DatasetError, load
from .replica import DEFAULT_SEED, marker_path, write_replica
from .report import differences, figures
from .slicer import check_sources, sensor_rows, write_slices
from .source import resolve

PROG = "edge-dataset"
_SOURCES_HELP = (
    f"accept a file whose number of distinct source devices is not {len(pub.MACS)} (the published "
    "sensors); device i then replays source (i-1) %% k of the k sorted MACs"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a file against the published format and figures")
    p.add_argument("path")
    p.add_argument("--allow-sources-mismatch", action="store_true", help=_SOURCES_HELP)

    p = sub.add_parser(
        "slice",
        help="write one slice per device plus manifest.json",
        description=(
            "Device i (1-based) replays source device (i-1) %% k, k = the distinct MACs sorted; "
            "the devices of one source split its time-ordered, de-duplicated readings into "
            "contiguous windows of equal length (+-1). Only files whose bytes change are written; "
            "device-*.csv files not in the new set are removed. Without --source: "
            "$EDGE_DATASET_SOURCE, else ./data/iot_telemetry_data.csv, else the SYNTHETIC "
            "replica cached at ./.cache/dataset/replica.csv."
        ),
    )
    p.add_argument("--devices", type=_positive, required=True, metavar="N")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--source", metavar="PATH")
    p.add_argument("--allow-sources-mismatch", action="store_true", help=_SOURCES_HELP)
    p.add_argument(
        "--check",
        action="store_true",
        help=(
            "validate and compute the slices as a real run would, write nothing, and report what "
            "would change ('X would be written, ... Z would be removed; manifest would be "
            "written|unchanged')"
        ),
    )
    p.add_argument(
        "--json",
        action="store_true",
        help=(
            "print the result as one JSON object (source, synthetic, devices, written, "
            "unchanged, removed, manifest_written, check, changed) instead of prose"
        ),
    )

    p = sub.add_parser(
        "sample",
        help="write the SYNTHETIC replica (never real data)",
        description=(
            "Write a synthetic replica calibrated to the published figures, plus the marker "
            "PATH.synthetic holding its sha256: validate and slice report the file as SYNTHETIC "
            "while the marker matches its bytes."
        ),
    )
    p.add_argument("--out", type=Path, required=True, metavar="PATH")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _note(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _label(ds: Dataset) -> str:
    return "SYNTHETIC replica, not real data" if ds.synthetic else "no replica marker"


def _validate(args: argparse.Namespace) -> int:
    ds = load(args.path, want_sha256=True)
    check_sources(ds, args.allow_sources_mismatch)
    fig = figures(ds, sum(len(r) for r in sensor_rows(ds)))
    devices = len(fig.per_device)
    print(f"{ds.path}: valid, {fig.rows:,} rows, {devices} source devices ({_label(ds)})")
    for mac, rows in fig.per_device.items():
        print(f"  {mac}  {rows:>9,} rows")
    print(f"duplicates: {fig.duplicates} ({fig.unique_rows:,} unique rows)")
    print(f"time range: {fig.first} .. {fig.last} ({fig.span_days:.2f} days)")
    if ds.sha256 == pub.SHA256:
        print("sha256: matches the public copy of the real file")
    if not ds.quoted:
        _note(f"warning: {ds.path}: not every value is quoted; slices quote them as published")
    diffs = differences(fig)
    if diffs:
        _note(f"warning: {ds.path}: differs from the published real file: {'; '.join(diffs)}")
    else:
        print("published figures: match (rows per device, duplicates, time range)")
    return 0


def _slice(args: argparse.Namespace) -> int:
    source = resolve(args.source)
    path = os.path.abspath(source.path)
    ds = load(path)
    check_sources(ds, args.allow_sources_mismatch)
    kind = "SYNTHETIC replica" if ds.synthetic else "dataset"
    if not args.json:
        print(f"source: {path} ({source.why}; {kind}, {ds.rows:,} rows)")
    result, _ = write_slices(ds, args.devices, args.out, check=args.check)
    if args.json:  # for tools (the fleet_artifacts role): what changed, not prose to parse
        changed = bool(result.written or result.removed or result.manifest_written)
        report = {
            "source": path,
            "why": source.why,
            "synthetic": ds.synthetic,
            "rows": ds.rows,
            "devices": args.devices,
            "written": result.written,
            "unchanged": result.unchanged,
            "removed": result.removed,
            "manifest_written": result.manifest_written,
            "check": args.check,
            "changed": changed,
        }
        print(json.dumps(report))
        return 0
    note = " (SYNTHETIC replica)" if ds.synthetic else ""
    would = "would be " if args.check else ""
    manifest = f"manifest {would}written" if result.manifest_written else "manifest unchanged"
    print(
        f"{args.devices} slices: {result.written} {would}written, {result.unchanged} unchanged, "
        f"{result.removed} {would}removed; {manifest}{note}"
    )
    return 0


def _sample(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    digest = write_replica(args.out, args.seed)
    print(
        f"{args.out}: SYNTHETIC replica written (seed {args.seed}, sha256 {digest[:12]}, "
        f"{time.perf_counter() - started:.1f} s); marker {marker_path(args.out)}; not real data"
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    command = {"validate": _validate, "slice": _slice, "sample": _sample}[args.command]
    try:
        return command(args)
    except DatasetError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = e.filename or "?"
        print(f"{PROG}: error: {where}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
