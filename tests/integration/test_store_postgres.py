"""PostgresStore against a real, private PostgreSQL: partitions, idempotence, retention, crash.

The cluster is a temporary one (postgres_fixture.py) on a free loopback port, removed at the
end; each test gets a database of its own.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any, Optional

import pytest
from postgres_fixture import PostgresCluster, pg_bindir

pytestmark = pytest.mark.integration

psycopg = pytest.importorskip("psycopg")

from edge_consumer.store import (  # noqa: E402 - after the importorskip
    AnomalyRow,
    BatchWriter,
    StoreError,
    TelemetryRow,
    open_store,
)
from edge_consumer.store import postgres as pg_module  # noqa: E402
from edge_consumer.store.partitions import day_of, partition_name  # noqa: E402
from edge_consumer.store.postgres import PostgresStore  # noqa: E402
from edge_consumer.store.sqlite import SqliteStore  # noqa: E402
from support.polling import wait_until  # noqa: E402

DAY = 86_400.0
NOW = time.time()
MIDNIGHT = (NOW // DAY) * DAY  # today, 00:00 UTC


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (set PG_BINDIR)")
    with PostgresCluster() as pg:
        yield pg


@pytest.fixture
def dsn(cluster: PostgresCluster, request: pytest.FixtureRequest) -> str:
    if not cluster.ready():  # a previous test killed it and failed before restarting
        cluster.kill()
        cluster.start()
    return cluster.create_database(request.node.name[:60].lower().replace("[", "_").rstrip("]"))


@pytest.fixture
def store(dsn: str) -> Iterator[PostgresStore]:
    s = open_store(dsn, retention_days=3)
    assert isinstance(s, PostgresStore)
    yield s
    s.close()


def row(
    seq: int,
    ts: Optional[float] = None,
    *,
    device: str = "0a:ed:9e:00:00:01",
    epoch: Optional[int] = 7,
) -> TelemetryRow:
    return TelemetryRow(
        device_id=device,
        seq=seq,
        epoch=epoch,
        ts=MIDNIGHT + 3600 + seq if ts is None else ts,
        source_ts=1594512094.3859746 + seq,
        device_name="pi-0001",
        source_device="b8:27:eb:bf:9d:51",
        temp=19.700000762939453,
        humidity=51.0 + seq % 7,
        co=0.004955938648391245,
        lpg=0.007651,
        smoke=0.020411,
        light=seq % 3 == 0,
        motion=seq % 5 == 0,
    )


def query(dsn: str, sql: str, params: Any = None) -> list[Any]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def count(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM telemetry")[0][0])


def test_schema_is_partitioned_by_day_with_partitions_ahead(store: PostgresStore, dsn: str) -> None:
    today, tomorrow = day_of(NOW), day_of(NOW + DAY)
    assert store.partitions() == [partition_name("telemetry", d) for d in (today, tomorrow)]
    assert store.partitions("anomalies") == [
        partition_name("anomalies", d) for d in (today, tomorrow)
    ]
    strategy = query(
        dsn,
        "SELECT partstrat FROM pg_partitioned_table WHERE partrelid = 'telemetry'::regclass",
    )
    assert strategy == [("r",)]
    bounds = query(
        dsn,
        "SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = %s",
        (partition_name("telemetry", today),),
    )[0][0]
    assert f"FROM ('{today:%Y-%m-%d} 00:00:00+00') TO ('{tomorrow:%Y-%m-%d} 00:00:00+00')" in bounds


def test_rows_land_in_the_partition_of_their_utc_day(store: PostgresStore, dsn: str) -> None:
    stamps = [
        MIDNIGHT - 3 * DAY + 5,
        MIDNIGHT - 1e-6,  # yesterday's last microsecond
        MIDNIGHT - 4e-7,  # rounds to today's midnight: today, as partitions.day_of says
        MIDNIGHT,
        MIDNIGHT + DAY + 1,  # tomorrow
        MIDNIGHT + 5 * DAY,  # a clock ahead: made on demand
    ]
    store.write_batch([row(i, ts) for i, ts in enumerate(stamps)])
    placed = dict(query(dsn, "SELECT seq, tableoid::regclass::text FROM telemetry"))
    assert placed == {i: partition_name("telemetry", day_of(ts)) for i, ts in enumerate(stamps)}
    assert len(store.partitions()) == 5  # -3, -1, 0, +1, +5 days


def test_inserts_are_idempotent(store: PostgresStore, dsn: str) -> None:
    rows = [row(i) for i in range(200)]
    store.write_batch(rows)
    store.write_batch(rows)  # a redelivered batch
    store.write_batch([*rows[50:70], row(200), row(200), row(201)])  # and inside one batch
    assert count(dsn) == 202


def test_a_republished_reading_with_a_new_ts_is_stored_once(store: PostgresStore, dsn: str) -> None:
    # Agent crash before the PUBACK: seq 5 again after the restart, stamped (a day) later; and
    # both copies arriving in one batch.
    store.write_batch([row(i, MIDNIGHT - DAY + i) for i in range(10)])
    store.write_batch([row(i, MIDNIGHT + 60 + i) for i in range(5, 15)])
    store.write_batch([row(20, MIDNIGHT + 100), row(20, MIDNIGHT + 130)])
    got = {r.seq: r.ts for r in store.read_range(row(0).device_id, 0, 4e9)}
    assert sorted(got) == [*range(15), 20]
    assert got[5] == MIDNIGHT - DAY + 5 and got[14] == MIDNIGHT + 60 + 14
    assert got[20] == MIDNIGHT + 100
    # Heads went with retention or were never written: the probe still finds the old copy.
    query(dsn, "DELETE FROM telemetry_heads")
    store.write_batch([row(3, MIDNIGHT + 500)])
    assert count(dsn) == 16


def test_a_new_epoch_and_no_epoch_are_their_own_keys(store: PostgresStore) -> None:
    store.write_batch([row(i, epoch=1) for i in range(3)])
    store.write_batch([row(i, MIDNIGHT + 7200 + i, epoch=2) for i in range(3)])
    store.write_batch([row(i, MIDNIGHT + 9000 + i, epoch=None) for i in range(3)])
    store.write_batch([row(i, MIDNIGHT + 9900 + i, epoch=None) for i in range(3)])
    got = [(r.epoch, r.seq) for r in store.read_range(row(0).device_id, 0, 4e9)]
    assert got == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (None, 0), (None, 1), (None, 2)]


@pytest.mark.parametrize("load", ["copy", "executemany"])
def test_both_loaders_agree_with_sqlite(dsn: str, tmp_path: Path, load: str) -> None:
    rnd = random.Random(5)
    rows = [
        row(seq, MIDNIGHT - DAY + rnd.uniform(0, 2 * DAY), device=f"d{seq % 4}", epoch=e)
        for e in (None, 3)
        for seq in range(300)
    ]
    rnd.shuffle(rows)
    with PostgresStore(dsn, load=load) as pg, SqliteStore(str(tmp_path / "t.db")) as lite:
        for s in (pg, lite):
            for start in range(0, len(rows), 128):
                s.write_batch(rows[start : start + 128])
            s.write_batch(rows[:50])
        for device in ("d0", "d3"):
            a = list(pg.read_range(device, MIDNIGHT - DAY / 2, MIDNIGHT + DAY / 2))
            b = list(lite.read_range(device, MIDNIGHT - DAY / 2, MIDNIGHT + DAY / 2))
            assert len(a) == len(b) > 10
            for x, y in zip(a, b):
                assert x._replace(ts=0) == y._replace(ts=0)
                assert abs(x.ts - y.ts) <= 5e-7  # microseconds in PostgreSQL
            a_recent, b_recent = pg.recent(device, MIDNIGHT, 10), lite.recent(device, MIDNIGHT, 10)
            assert [r.seq for r in a_recent] == [r.seq for r in b_recent]


def test_read_range_pages_through_ties(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_module, "READ_CHUNK", 7)
    rows = [row(i, MIDNIGHT + i // 10, epoch=e) for e in (1, 2) for i in range(53)]
    store.write_batch(rows)
    got = list(store.read_range(row(0).device_id, 0, 4e9))
    assert got == sorted(rows, key=lambda r: (r.ts, r.epoch, r.seq))


def test_retention_drops_whole_partitions(store: PostgresStore, dsn: str) -> None:
    # retention_days=3; a reading every 6 hours over the last 6 days.
    rows = [row(i, MIDNIGHT - 6 * DAY + i * DAY / 4) for i in range(28)]
    store.write_batch(rows)
    store.write_anomalies(
        [AnomalyRow(r.device_id, r.seq, r.ts, "temp", "spike", r.temp, 0.9) for r in rows]
    )
    before = set(store.partitions())
    now = MIDNIGHT + 3600  # cutoff: 3 days ago, 01:00 -> partitions ending by then go
    result = store.apply_retention(now)
    gone = {partition_name("telemetry", day_of(MIDNIGHT - d * DAY)) for d in (4, 5, 6)}
    assert set(result.partitions_dropped) == gone | {
        g.replace("telemetry", "anomalies", 1) for g in gone
    }
    assert set(store.partitions()) == before - gone
    kept = [r.seq for r in store.read_range(row(0).device_id, 0, 4e9)]
    assert kept == [r.seq for r in rows if r.ts >= MIDNIGHT - 3 * DAY]  # whole days kept
    assert min(r.ts for r in store.read_anomalies(row(0).device_id, 0, 4e9)) == MIDNIGHT - 3 * DAY
    assert store.apply_retention(now).partitions_dropped == ()  # idempotent
    # Writing a row of a dropped day again makes its partition again.
    store.write_batch([row(99, MIDNIGHT - 5 * DAY)])
    assert count(dsn) == len(kept) + 1


def test_anomalies_round_trip(store: PostgresStore) -> None:
    found = [
        AnomalyRow("a", 4, MIDNIGHT, "*", "dropout", float("inf"), float("nan"), "silent"),
        AnomalyRow("a", 5, MIDNIGHT + 1.5, "temp", "spike", 0.0, 12.5, None),
        AnomalyRow("a", 6, MIDNIGHT - DAY, "co", "drift", 0.01, 8.0, "x"),  # made on demand
    ]
    store.write_anomalies(found)
    store.write_anomalies(found)
    assert store.read_anomalies("a", MIDNIGHT - DAY, MIDNIGHT + 2) == [
        found[2],
        found[0]._replace(value=None, score=None),
        found[1],
    ]


def test_a_partition_dropped_by_another_process_is_made_again(dsn: str) -> None:
    with PostgresStore(dsn, retention_days=1) as a, PostgresStore(dsn, retention_days=1) as b:
        a.write_batch([row(0, MIDNIGHT - 2 * DAY)])
        b.apply_retention(MIDNIGHT + 3600)  # drops that day behind a's back
        with pytest.raises(psycopg.Error):
            a.write_batch([row(1, MIDNIGHT - 2 * DAY)])  # a's cache said it existed
        a.write_batch([row(1, MIDNIGHT - 2 * DAY)])  # re-read and made again: a retry works
        assert [r.seq for r in a.read_range(row(0).device_id, 0, 4e9)] == [1]


def test_bad_dsns_are_one_store_error(cluster: PostgresCluster) -> None:
    with pytest.raises(StoreError, match="cannot open PostgreSQL store"):
        open_store(f"postgresql://postgres@127.0.0.1:{cluster.port}/no_such_db")
    with pytest.raises(StoreError, match="bad PostgreSQL DSN: invalid URI query parameter"):
        open_store("postgresql://127.0.0.1/db?nosuch=1")


def test_unix_socket_dsn(cluster: PostgresCluster) -> None:
    url = f"postgresql://postgres@/postgres?host={cluster.workdir}&port={cluster.port}"
    with open_store(url) as s:
        assert isinstance(s, PostgresStore)


# --- the crash test ---------------------------------------------------------------------------

DEVICES = 50


def fleet_row(i: int) -> TelemetryRow:
    return row(i // DEVICES, MIDNIGHT + 1000 + i * 0.01, device=f"dev{i % DEVICES:02d}")


class Acked:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[int] = []

    def ack(self, i: int) -> Any:
        def done() -> None:
            with self.lock:
                self.items.append(i)

        return done

    def snapshot(self) -> list[int]:
        with self.lock:
            return list(self.items)


def feed(writer: BatchWriter[TelemetryRow], items: list[int], acked: Acked) -> threading.Thread:
    def run() -> None:
        for i in items:
            try:
                writer.put(fleet_row(i), acked.ack(i))
            except Exception:  # abandoned: the rest stays unacked, as with a dead consumer
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_sigkill_mid_write_then_restart_stores_every_row_exactly_once(
    cluster: PostgresCluster, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    first_half, total = 30_000, 60_000
    options: dict[str, Any] = {
        "batch_rows": 500,
        "batch_delay": 0.01,
        "retry_initial": 0.05,
        "retry_max": 0.5,
    }

    # 1. The server dies under a running writer, and the consumer with it (abandoned).
    store1 = PostgresStore(dsn)
    writer1 = BatchWriter(store1.write_batch, **options, isolation=store1.isolation()).start()
    acked1 = Acked()
    feeder1 = feed(writer1, list(range(first_half)), acked1)
    assert wait_until(lambda: len(acked1.snapshot()) >= 5000, 60)
    cluster.kill()  # SIGKILL: postmaster and backends, mid-COPY or mid-commit
    writer1.abandon()
    time.sleep(0.2)
    acked_before = acked1.snapshot()
    assert len(acked_before) < first_half  # it really died mid-stream
    cluster.start()  # crash recovery from the WAL
    feeder1.join(10)
    store1.close()
    stored = {(d, s) for d, s in query(dsn, "SELECT device_id, seq FROM telemetry")}
    missing = [i for i in acked_before if (fleet_row(i).device_id, fleet_row(i).seq) not in stored]
    assert missing == [], f"{len(missing)} acknowledged rows lost in the crash"

    # 2. A new consumer: the broker redelivers everything unacked, new readings follow, and
    # the server is killed again while this writer runs; it must retry until it is back.
    caplog.clear()  # writer1's outage line
    caplog.set_level("INFO", logger="edge_consumer.store.writer")
    store2 = PostgresStore(dsn)
    writer2 = BatchWriter(store2.write_batch, **options, isolation=store2.isolation()).start()
    acked2 = Acked()
    again = sorted(set(range(first_half)) - set(acked_before))
    feeder2 = feed(writer2, again + list(range(first_half, total)), acked2)
    assert wait_until(lambda: len(acked2.snapshot()) >= 5000, 60)
    cluster.kill()
    killed_at = len(acked2.snapshot())
    assert wait_until(lambda: writer2.stats().in_outage, 10)
    time.sleep(2)  # down for a while: the writer keeps retrying, acks nothing
    assert len(acked2.snapshot()) <= killed_at + options["batch_rows"]
    cluster.start()
    feeder2.join(60)
    assert writer2.close(timeout=120)
    store2.close()

    final = query(dsn, "SELECT count(*), count(DISTINCT (device_id, epoch, seq)) FROM telemetry")[0]
    assert final == (total, total), "every row exactly once"
    acks2 = acked2.snapshot()
    assert len(acks2) == len(set(acks2)) == len(again) + total - first_half
    assert set(acks2) | set(acked_before) == set(range(total))
    stats = writer2.stats()
    assert stats.outages >= 1 and stats.rows_committed == len(acks2)
    # A killed server is an outage, never a row's fault: nothing went to the dead letters.
    assert writer1.stats().dead_letters == stats.dead_letters == 0
    assert query(dsn, "SELECT count(*) FROM dead_letters") == [(0,)]
    outage_lines = [r for r in caplog.records if r.name == "edge_consumer.store.writer"]
    assert [r.levelname for r in outage_lines] == ["ERROR", "WARNING"] * stats.outages
    print(
        f"\nkill 1: {len(acked_before)} of {first_half} rows acked before the kill, all stored"
        f"\nkill 2: {killed_at} acked at the kill; {stats.write_failures} failed attempts; "
        f"{outage_lines[-1].getMessage()}\nend: {total} rows stored, each once"
    )


def test_partitions_are_named_for_utc_days() -> None:
    assert partition_name("telemetry", date(2026, 11, 29)) == "telemetry_p20261129"


def test_export_from_postgresql_matches_sqlite(dsn: str, tmp_path: Path) -> None:
    from edge_consumer.store.cli import main

    rows = [row(i, MIDNIGHT - DAY + i * 600.123456) for i in range(300)]
    lite = f"sqlite://{tmp_path}/t.db"
    for url in (dsn, lite):
        with open_store(url) as s:
            s.write_batch(rows)
    outputs = []
    for url, name in ((dsn, "pg.csv"), (lite, "lite.csv")):
        out = tmp_path / name
        args = ["export", "--store", url, "--device", rows[0].device_id, "--out", str(out)]
        assert main([*args, "--since", str(MIDNIGHT - DAY / 2), "--until", str(MIDNIGHT)]) == 0
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0].count(b"\n") == 1 + sum(MIDNIGHT - DAY / 2 <= r.ts < MIDNIGHT for r in rows)


# --- dead letters: one bad row never stops the rest --------------------------------------------

TOO_BIG = 2**63  # validation takes any seq >= 0; bigint cannot hold it


def test_a_row_postgresql_rejects_is_dead_lettered_and_the_rest_stored_and_acked(
    store: PostgresStore, dsn: str
) -> None:
    # What an operator may add to the table: a reading of more than 100 % humidity fails.
    query(dsn, "ALTER TABLE telemetry ADD CONSTRAINT humidity_at_most_100 CHECK (humidity <= 100)")
    bad = {137: row(137)._replace(humidity=150.0), 642: row(642)._replace(seq=TOO_BIG)}
    acked = Acked()
    writer = BatchWriter(
        store.write_batch, batch_rows=200, batch_delay=0.01, isolation=store.isolation()
    ).start()
    for i in range(1000):
        writer.put(bad.get(i, row(i)), acked.ack(i))
    assert writer.close(timeout=60)
    assert acked.snapshot() == list(range(1000))  # every one, in put order: the bad ones too
    stored = [r[0] for r in query(dsn, "SELECT seq FROM telemetry ORDER BY seq")]
    assert stored == [i for i in range(1000) if i not in bad]
    letters = store.read_dead_letters()
    device = row(0).device_id
    assert [(d.kind, d.device_id, d.key) for d in letters] == [
        ("telemetry", device, f'["{device}", 7, 137]'),
        ("telemetry", device, f'["{device}", 7, {TOO_BIG}]'),
    ]
    assert letters[0].error.startswith('CheckViolation: new row for relation "telemetry_p')
    assert 'violates check constraint "humidity_at_most_100"' in letters[0].error
    assert letters[1].error == "OverflowError: int too big to convert"  # the binary COPY's
    assert [d.recover() for d in letters] == list(bad.values())  # nothing is lost
    stats = writer.stats()
    assert stats.dead_letters == 2 and stats.outages == 0


def test_a_row_a_trigger_refuses_is_dead_lettered(store: PostgresStore, dsn: str) -> None:
    query(
        dsn,
        """
        CREATE FUNCTION refuse_device() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.device_id = 'banned' THEN RAISE EXCEPTION 'device % is banned', NEW.device_id;
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_device BEFORE INSERT ON telemetry
            FOR EACH ROW EXECUTE FUNCTION refuse_device();
        """,
    )
    acked = Acked()
    writer = BatchWriter(store.write_batch, batch_delay=0.01, isolation=store.isolation()).start()
    for i in range(50):
        writer.put(row(i, device="banned") if i == 10 else row(i), acked.ack(i))
    assert writer.close(timeout=30)
    assert acked.snapshot() == list(range(50))
    assert count(dsn) == 49
    (letter,) = store.read_dead_letters()
    assert letter.device_id == "banned"
    assert letter.error.startswith("RaiseException: device banned is banned CONTEXT: PL/pgSQL")


def test_the_writer_transient_rule_of_postgresql(
    store: PostgresStore, cluster: PostgresCluster
) -> None:
    errors = psycopg.errors
    for transient in (
        errors.LockNotAvailable("lock timeout"),  # a partition's DDL behind a long query
        errors.DeadlockDetected(),
        errors.SerializationFailure(),
        errors.DiskFull(),
        errors.AdminShutdown(),
        errors.QueryCanceled(),
        errors.InternalError_(),
        psycopg.OperationalError("connection refused"),
        psycopg.InterfaceError("the connection is closed"),
        OSError(5, "I/O error"),
    ):
        assert store.transient(transient), transient
    for row_error in (
        errors.CheckViolation(),
        errors.NotNullViolation(),
        errors.NumericValueOutOfRange(),
        errors.InvalidTextRepresentation(),
        errors.RaiseException(),
        errors.ProgramLimitExceeded(),  # e.g. a value too big for an index row
        psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),
        ValueError("timestamp outside 1970..2100"),
    ):
        assert not store.transient(row_error), row_error
    store.ping()
    cluster.kill()
    try:
        with pytest.raises(psycopg.OperationalError):
            store.ping()
        # After the connection broke, whatever the error, it is the database's.
        assert store.transient(ValueError("anything"))
    finally:
        cluster.start()
    store.ping()  # reconnects
    assert not store.transient(ValueError("anything"))
