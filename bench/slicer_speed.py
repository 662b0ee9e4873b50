"""Slicer speed: `edge-dataset slice --devices 1000` against a bare pandas.read_csv of the source.

All are timed in this process on the same 405,184-row file (the SYNTHETIC replica, generated
once into .cache/bench/), wall clock and CPU time (time.process_time, the steadier figure on a
busy host). Each round runs every command once, one after the other, so they see the same load:
pandas.read_csv alone, slice into a fresh directory (every file written), slice again into the
same directory (nothing changed, nothing rewritten) and slice --check on it (writes nothing).
Best and median over the rounds. Target: fresh slice <= 1.5 x read_csv.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import pandas as pd
from edge_dataset import cli
from edge_dataset.replica import write_replica
from edge_dataset.source import _replica_intact

TARGET = 1.5


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    started, started_cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - started, time.process_time() - started_cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=Path(".cache/bench/replica-405184.csv"))
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if not _replica_intact(args.source):
        print(f"generating the SYNTHETIC replica at {args.source} ...")
        write_replica(args.source)

    with tempfile.TemporaryDirectory() as scratch:
        counter = iter(range(10**6))
        target: list[Path] = []

        def fresh_dir() -> None:
            target[:] = [Path(scratch) / f"run-{next(counter)}"]

        def run_slice(*extra: str) -> None:
            argv = ["slice", "--devices", str(args.devices), "--out", str(target[0]), *extra]
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli.main([*argv, "--source", str(args.source)])
            if code != 0:
                raise SystemExit(f"slice failed with exit code {code}")

        labels = (
            "pandas.read_csv (defaults)",
            f"slice --devices {args.devices}, fresh dir",
            f"slice --devices {args.devices}, unchanged rerun",
            f"slice --devices {args.devices} --check, unchanged",
        )
        samples: dict[str, list[tuple[float, float]]] = {label: [] for label in labels}
        for _ in range(args.runs):
            fresh_dir()
            samples[labels[0]].append(timed(lambda: pd.read_csv(args.source)))
            samples[labels[1]].append(timed(run_slice))
            samples[labels[2]].append(timed(run_slice))
            samples[labels[3]].append(timed(lambda: run_slice("--check")))

    print(f"source: {args.source} ({args.source.stat().st_size:,} bytes), {args.runs} rounds")
    print(
        f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"
    )
    best = {}
    for label in labels:
        walls, cpus = zip(*samples[label])
        best[label] = (min(walls), min(cpus))
        print(
            f"{label}: wall best {min(walls):.3f} s (median {statistics.median(walls):.3f}), "
            f"cpu best {min(cpus):.3f} s (median {statistics.median(cpus):.3f})"
        )
    read = best[labels[0]]
    for label in labels[1:]:
        wall, cpu = best[label]
        print(
            f"ratio {label.split(' ', 1)[1]} / read_csv (best): "
            f"wall {wall / read[0]:.2f}, cpu {cpu / read[1]:.2f} (target <= {TARGET})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
