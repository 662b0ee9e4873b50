"""What a telemetry store and the anomaly detectors cost the consumer: msg/s on the same flood.

Reuses consumer_throughput.py's private Mosquitto, flood publishers and exact-accounting check
(through consumer_observability.py's MonitoredBench, which adds consumer flags). Variants:

  plain              no store, no anomalies (the baseline)
  anomalies          --anomalies: the detectors on every reading, findings published
  sqlite             --store sqlite:///<fresh file>?synchronous=full (as the service runs it)
  postgresql         --store <a fresh database in a private PostgreSQL cluster>
  sqlite+anomalies   what the monitor service runs by default

Each round runs every variant back to back, so that the load other processes put on a shared
machine hits all alike; the table gives medians, "vs plain" the median of each round's ratio.
msg/s is received / (last - first message seen by the consumer); msg per CPU-second divides
by the consumer's CPU time (start-up excluded in backlog; PostgreSQL's own processes are not
counted). After each store run the store must hold exactly the readings published: count(*)
and count of distinct (device_id, epoch, seq) both equal to it, or the bench fails. rows/s is
the rows committed / the drain's wall time: from the first message the consumer saw to its
summary, written once the writer has committed everything (so the store's close and up to a
0.1 s tick of the consumer's main loop are included: a slight underestimate).

With a store, messages stay unacknowledged until their batch commits: the consumer asks a
Receive Maximum of 4000, the broker here sets no in-flight limit of its own
(max_inflight_messages 0) and queues up to max_queued_messages, checked against the flood so
that the broker cannot drop any of it.

Targets: anomalies at >= 80 % of plain; each store >= 20,000 rows/s with the consumer's
ingest rate not below the store's rate.

  backlog (default): the consumer drains a queued flood, its own capacity.
  live:              the consumer is subscribed while the publishers flood (end to end).

    python bench/consumer_store.py [--messages 100000] [--devices 100] [--rounds 3]
                                   [--mode backlog|live] [--no-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests" / "integration"))
from consumer_observability import MonitoredBench  # noqa: E402
from consumer_throughput import load, report  # noqa: E402
from postgres_fixture import PostgresCluster, pg_bindir  # noqa: E402

VARIANTS = ("plain", "anomalies", "sqlite", "postgresql", "sqlite+anomalies")
TARGET_ROWS = 20_000  # rows/s into either store
TARGET_ANOMALIES = 0.80  # anomalies msg/s vs plain
COUNT_SQL = (
    "SELECT (SELECT count(*) FROM telemetry),"
    " (SELECT count(*) FROM (SELECT DISTINCT device_id, epoch, seq FROM telemetry) AS k),"
    " (SELECT count(*) FROM anomalies)"
)


def store_counts(url: str, pg: Optional[PostgresCluster]) -> tuple[int, int, int]:
    """(rows, distinct (device_id, epoch, seq), anomalies) in the store at url."""
    if url.startswith("sqlite:"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite://").split("?")[0])) as db:
            rows, distinct, found = db.execute(COUNT_SQL).fetchone()
            return int(rows), int(distinct), int(found)
    assert pg is not None
    rows, distinct, found = pg.psql(COUNT_SQL, database=url.rsplit("/", 1)[1]).split("|")
    return int(rows), int(distinct), int(found)


def check_broker(bench: MonitoredBench, total: int) -> None:
    """The broker must queue the whole flood for the absent consumer, or it drops messages."""
    conf = (bench.work / "mosquitto.conf").read_text()
    queued = re.search(r"^max_queued_messages (\d+)$", conf, re.M)
    if queued is None or 0 < int(queued.group(1)) < total:
        raise SystemExit(f"mosquitto.conf queues fewer than the {total:,} messages of the flood")


def one_run(
    work: Path, args: argparse.Namespace, variant: str, pg: Optional[PostgresCluster]
) -> dict[str, Any]:
    per_device = args.messages // args.devices
    total = per_device * args.devices
    work.mkdir(parents=True)
    url = None
    if variant.startswith("sqlite"):
        url = f"sqlite://{work / 't.db'}?synchronous=full"
    elif variant == "postgresql":
        assert pg is not None
        url = pg.create_database(f"bench_{work.name.replace('-', '_')}")
    extra: tuple[str, ...] = ("--store", url) if url else ()
    extra += ("--anomalies",) if "anomalies" in variant else ()
    bench = MonitoredBench(work, args.devices, per_device, args.timeout, extra=extra)
    try:
        bench.start_broker()
        check_broker(bench, total)
        result = bench.live() if args.mode == "live" else bench.backlog()
    finally:
        bench.stop_all()
    result["phase"] = f"{args.mode} {variant}"
    exact, rate = report(result, total)
    if not exact or result["rc"] != 0:
        raise SystemExit(f"{variant}: accounting was not exact (or the consumer failed)")
    totals = result["totals"]
    cpu = totals["cpu_s"]
    if args.mode == "backlog":  # the same flags for 0.5 s: what start-up and idling cost
        cpu -= load(work / "first.json")["totals"]["cpu_s"]
    run = {"rate": rate, "per_cpu": totals["received"] / max(cpu, 1e-9)}
    if url is not None:
        rows, distinct, found = store_counts(url, pg)
        if rows != total or distinct != total:
            raise SystemExit(
                f"{variant}: the store holds {rows:,} rows ({distinct:,} distinct readings)"
                f" for the {total:,} readings published: a reading is missing or duplicated"
            )
        first = min(d["first_seen"] for d in result["devices"] if d["first_seen"])
        drain = (work / f"{args.mode}.json").stat().st_mtime - first
        run["rows_s"] = rows / drain
        print(
            f"[{result['phase']}] store: {rows:,} rows, all distinct, {found:,} anomalies;"
            f" {run['rows_s']:,.0f} rows/s committed over a {drain:.2f} s drain"
        )
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every variant")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--mode", choices=("backlog", "live"), default="backlog")
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()

    variants = list(VARIANTS)
    note = ""
    if args.no_postgres:
        note = "postgresql: skipped (--no-postgres)"
    elif pg_bindir() is None:
        note = "postgresql: skipped, PostgreSQL is not installed (set PG_BINDIR)"
    if note:
        variants.remove("postgresql")
        print(note)
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="consumer-store-"))
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        with contextlib.ExitStack() as stack:
            pg = None
            if "postgresql" in variants:
                pg = stack.enter_context(PostgresCluster())
                print(f"PostgreSQL {pg.psql('SHOW server_version')}, private cluster")
            for n in range(args.rounds):
                rounds.append({v: one_run(work / f"{n}-{v}", args, v, pg) for v in variants})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(variant: str, key: str) -> float:
        return float(statistics.median(r[variant][key] for r in rounds))

    def vs_plain(variant: str) -> float:
        return float(statistics.median(r[variant]["rate"] / r["plain"]["rate"] for r in rounds))

    print()
    print(f"{args.mode}: {args.messages:,} messages, {args.devices} devices, {args.rounds} rounds")
    print(f"  {'variant':<18} {'msg/s':>8} {'vs plain':>9} {'msg/CPU-s':>10} {'rows/s':>8}  rounds")
    for v in variants:
        stored = f"{median(v, 'rows_s'):,.0f}" if "rows_s" in rounds[0][v] else "-"
        each = ", ".join(f"{r[v]['rate']:,.0f}" for r in rounds)
        print(f"  {v:<18} {median(v, 'rate'):>8,.0f} {vs_plain(v):>9.1%}"
              f" {median(v, 'per_cpu'):>10,.0f} {stored:>8}  msg/s {each}")  # fmt: skip
    print()
    verdicts = []
    if "anomalies" in variants:
        ratio = vs_plain("anomalies")
        text = f"anomalies: msg/s >= {TARGET_ANOMALIES:.0%} of plain ({ratio:.1%})"
        verdicts.append((ratio >= TARGET_ANOMALIES, text))
    for v in variants:
        if "rows_s" in rounds[0][v]:
            rows_s, rate = median(v, "rows_s"), median(v, "rate")
            text = f"{v}: >= {TARGET_ROWS:,} rows/s committed ({rows_s:,.0f} rows/s)"
            verdicts.append((rows_s >= TARGET_ROWS, text))
            text = f"{v}: consumer ingest not below the store's rate ({rate:,.0f} msg/s"
            verdicts.append((rate >= rows_s, f"{text} vs {rows_s:,.0f} rows/s)"))
    for ok, text in verdicts:
        print(f"  {'met   ' if ok else 'MISSED'} {text}")
    if note:
        print(f"  ({note})")
    return 0 if all(ok for ok, _ in verdicts) else 3


if __name__ == "__main__":
    sys.exit(main())
