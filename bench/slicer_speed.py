"""Slicer speed: `edge-dataset slice --devices 1000` against a bare pandas.read_csv of the source.

Both are timed in this process, best of 3, on the same 405,184-row file (the SYNTHETIC replica,
generated once into .cache/bench/). The slice is timed twice: into a fresh directory (every file
written) and again into the same directory (nothing changed, nothing rewritten).
Target: fresh slice <= 1.5 x read_csv.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path
from typing import Callable

import pandas as pd
from edge_dataset import cli
from edge_dataset.replica import write_replica
from edge_dataset.source import _replica_intact

TARGET = 1.5


def best_of(
    runs: int, fn: Callable[[], object], before: Callable[[], object] = lambda: None
) -> float:
    best = float("inf")
    for _ in range(runs):
        before()
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=Path(".cache/bench/replica-405184.csv"))
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not _replica_intact(args.source):
        print(f"generating the SYNTHETIC replica at {args.source} ...")
        write_replica(args.source)

    read = best_of(args.runs, lambda: pd.read_csv(args.source))

    with tempfile.TemporaryDirectory() as scratch:
        counter = iter(range(10**6))
        target: list[Path] = []

        def fresh_dir() -> None:
            target[:] = [Path(scratch) / f"run-{next(counter)}"]

        def run_slice() -> None:
            argv = ["slice", "--devices", str(args.devices), "--out", str(target[0])]
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli.main([*argv, "--source", str(args.source)])
            if code != 0:
                raise SystemExit(f"slice failed with exit code {code}")

        fresh = best_of(args.runs, run_slice, before=fresh_dir)
        rerun = best_of(args.runs, run_slice)  # same directory again: nothing to write

    print(f"source: {args.source} ({args.source.stat().st_size:,} bytes)")
    print(f"pandas.read_csv (defaults), best of {args.runs}: {read:.3f} s")
    print(f"slice --devices {args.devices}, fresh dir, best of {args.runs}: {fresh:.3f} s")
    print(f"slice --devices {args.devices}, unchanged rerun, best of {args.runs}: {rerun:.3f} s")
    print(f"ratio fresh/read_csv: {fresh / read:.2f} (target <= {TARGET})")
    print(f"ratio rerun/read_csv: {rerun / read:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
