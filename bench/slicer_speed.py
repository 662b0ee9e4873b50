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
import os
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
) -> tuple[float, float]:
    """Best wall-clock and best CPU seconds; CPU time is the steadier figure on a busy host."""
    wall = cpu = float("inf")
    for _ in range(runs):
        before()
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - started_cpu)
    return wall, cpu


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

    print(f"source: {args.source} ({args.source.stat().st_size:,} bytes), best of {args.runs}")
    print(f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rows = [
        ("pandas.read_csv (defaults)", read),
        (f"slice --devices {args.devices}, fresh dir", fresh),
        (f"slice --devices {args.devices}, unchanged rerun", rerun),
    ]
    for label, (wall, cpu) in rows:
        print(f"{label}: wall {wall:.3f} s, cpu {cpu:.3f} s")
    for label, (wall, cpu) in rows[1:]:
        print(
            f"ratio {label.split(', ')[1]} / read_csv: wall {wall / read[0]:.2f}, "
            f"cpu {cpu / read[1]:.2f} (target <= {TARGET})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
