"""Telemetry store write rate: rows/s into SQLite and a real PostgreSQL, per batch size.

Writes N synthetic readings (100 devices, seq per device, publish times now) through
TelemetryStore.write_batch, one transaction per batch, into a fresh store each time:

  sqlite            WAL, synchronous=NORMAL (the default)
  sqlite full       WAL, synchronous=FULL (an fsync per commit)
  postgresql copy   COPY into a staging table, then INSERT ... SELECT ... ON CONFLICT (default)
  postgresql executemany   the same with executemany (pipeline mode) into the staging table

PostgreSQL is a private temporary cluster (tests/integration/postgres_fixture.py) on a free
loopback port with stock durability settings (fsync, synchronous_commit on), removed at the
end. A second pass writes the same rows again (a redelivery storm: every row a duplicate), and
one line runs the rows through BatchWriter (its thread and acks included) into SQLite.

rows/s is wall time; rows/CPU-s divides by the CPU time of this process plus, for PostgreSQL,
the server's processes: on a machine shared with other jobs it says what the store costs.

    python bench/store_rate.py [--rows 200000] [--batches 500,1000] [--no-postgres]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from edge_consumer.store import BatchWriter, TelemetryRow, TelemetryStore  # noqa: E402
from edge_consumer.store.sqlite import SqliteStore  # noqa: E402

TARGET = 20_000  # rows/s
DEVICES = 100


def make_rows(n: int) -> list[TelemetryRow]:
    now = time.time()
    return [
        TelemetryRow(
            f"0a:ed:9e:00:{i % DEVICES // 256:02x}:{i % DEVICES % 256:02x}",
            i // DEVICES,
            61008130096940 + i % DEVICES,
            now - n * 0.01 + i * 0.01,
            1594512094.3859746 + i,
            f"pi-{i % DEVICES + 1:04d}",
            "b8:27:eb:bf:9d:51",
            22.0 + (i % 31) / 10,
            50.0 + (i % 17) / 10,
            0.004956 + (i % 13) * 1e-5,
            0.007651,
            0.020411,
            i % 4 == 0,
            i % 100 == 0,
        )
        for i in range(n)
    ]


def server_cpu() -> float:
    return 0.0


def timed(
    store: TelemetryStore,
    rows: Sequence[TelemetryRow],
    batch: int,
    server: Callable[[], float] = server_cpu,
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and the database server)."""
    started, cpu, cpu_server = time.perf_counter(), time.process_time(), server()
    for start in range(0, len(rows), batch):
        store.write_batch(rows[start : start + batch])
    spent = time.process_time() - cpu + server() - cpu_server
    return time.perf_counter() - started, spent


def report(name: str, batch: int, rows: int, times: tuple[float, float], note: str = "") -> bool:
    wall, cpu = times
    rate = rows / wall
    ok = rate >= TARGET
    mark = "ok" if ok else f"below {TARGET:,}"
    print(
        f"{name:<28} {batch:>6} {rate:>10,.0f} {rows / cpu:>12,.0f} {wall:>8.2f} s  {mark}{note}",
        flush=True,
    )
    return ok


def run_sqlite(rows: list[TelemetryRow], batches: list[int], tmp: Path) -> bool:
    ok = True
    for sync in ("normal", "full"):
        for batch in batches:
            path = tmp / f"bench-{sync}-{batch}.db"
            with SqliteStore(str(path), synchronous=sync) as store:
                name = "sqlite" if sync == "normal" else "sqlite full"
                ok &= report(name, batch, len(rows), timed(store, rows, batch))
                if batch == batches[-1]:
                    report(f"{name} (all dup.)", batch, len(rows), timed(store, rows, batch))
    return ok


def run_writer(rows: list[TelemetryRow], batch: int, tmp: Path) -> bool:
    with SqliteStore(str(tmp / "bench-writer.db")) as store:
        writer = BatchWriter(store.write_batch, batch_rows=batch, batch_delay=0.05).start()
        acked = [0]

        def ack() -> None:
            acked[0] += 1

        started, cpu = time.perf_counter(), time.process_time()
        for r in rows:
            writer.put(r, ack)
        writer.close(timeout=300)
        times = time.perf_counter() - started, time.process_time() - cpu
    assert acked[0] == len(rows), acked[0]
    return report("BatchWriter -> sqlite", batch, len(rows), times, " (put to last ack)")


def run_postgres(rows: list[TelemetryRow], batches: list[int]) -> bool:
    from edge_consumer.store.postgres import PostgresStore
    from postgres_fixture import PostgresCluster, pg_bindir

    if pg_bindir() is None:
        print("postgresql: not installed, skipped (set PG_BINDIR)")
        return True
    ok = True
    with PostgresCluster() as pg:
        version = pg.psql("SHOW server_version")
        for load in ("copy", "executemany"):
            for batch in batches:
                dsn = pg.create_database(f"bench_{load}_{batch}")
                with PostgresStore(dsn, load=load) as store:
                    name = f"postgresql {load}"
                    times = timed(store, rows, batch, pg.cpu_seconds)
                    ok &= report(name, batch, len(rows), times)
                    if batch == batches[-1]:
                        times = timed(store, rows, batch, pg.cpu_seconds)
                        report(f"{name} (all dup.)", batch, len(rows), times)
        print(f"(PostgreSQL {version}, private cluster, fsync and synchronous_commit on)")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batches", default="500,1000")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    rows = make_rows(args.rows)
    print(f"{args.rows:,} rows from {DEVICES} devices, one transaction per batch")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'store':<28} {'batch':>6} {'rows/s':>10} {'rows/CPU-s':>12} {'time':>10}")
    tmp = Path(tempfile.mkdtemp(prefix="edge-store-bench-"))
    try:
        ok = run_sqlite(rows, batches, tmp)
        ok &= run_writer(rows, batches[-1], tmp)
        if not args.no_postgres:
            ok &= run_postgres(rows, batches)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
