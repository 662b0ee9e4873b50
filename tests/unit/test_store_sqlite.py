"""SqliteStore and open_store: idempotent writes, epochs, ranges, retention, atomic batches."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Optional

import pytest
from edge_agent import protocol
from edge_consumer.store import (
    AnomalyRow,
    StoreError,
    TelemetryRow,
    open_store,
    telemetry_row,
)
from edge_consumer.store import sqlite as sqlite_module
from edge_consumer.store.sqlite import SqliteStore
from edge_consumer.validation import Telemetry, Validator

T0 = 1_795_910_400.0  # 2026-11-29T00:00:00Z
DEVICE_A = "0a:ed:9e:00:00:01"
DAY = 86_400.0


def row(
    seq: int,
    ts: Optional[float] = None,
    *,
    device: str = "0a:ed:9e:00:00:01",
    epoch: Optional[int] = 7,
    temp: float = 22.7,
) -> TelemetryRow:
    return TelemetryRow(
        device_id=device,
        seq=seq,
        epoch=epoch,
        ts=T0 + seq if ts is None else ts,
        source_ts=1594512094.3859746 + seq,
        device_name="pi-0001",
        source_device="b8:27:eb:bf:9d:51",
        temp=temp,
        humidity=51.0,
        co=0.004956,
        lpg=0.007651,
        smoke=0.020411,
        light=seq % 2 == 0,
        motion=False,
    )


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with SqliteStore(str(tmp_path / "t.db"), retention_days=7) as s:
        yield s


def count(store: SqliteStore, table: str = "telemetry") -> int:
    return int(store.connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_file_is_in_wal_mode_with_the_schema(tmp_path: Path) -> None:
    SqliteStore(str(tmp_path / "t.db")).close()
    conn = sqlite3.connect(tmp_path / "t.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION
    plan = " ".join(
        str(r)
        for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM telemetry WHERE device_id = 'x' AND ts >= 0 "
            "ORDER BY ts, epoch, seq LIMIT 10"
        )
    )
    assert "telemetry_device_ts" in plan and "TEMP B-TREE" not in plan  # index order, no sort


def test_round_trip_keeps_every_field(store: SqliteStore) -> None:
    rows = [row(0), row(1), row(2, epoch=None)._replace(source_ts=None, source_device=None)]
    store.write_batch(rows)
    assert list(store.read_range(rows[0].device_id, 0, 1e10)) == rows


def test_writing_a_batch_twice_stores_it_once(store: SqliteStore) -> None:
    rows = [row(i) for i in range(100)]
    store.write_batch(rows)
    store.write_batch(rows)
    store.write_batch([*rows[40:60], row(100)])
    assert count(store) == 101


def test_duplicates_inside_one_batch_are_stored_once(store: SqliteStore) -> None:
    store.write_batch([row(1), row(1), row(2), row(1)])
    assert count(store) == 2


def test_a_republished_reading_with_a_new_ts_is_stored_once(store: SqliteStore) -> None:
    # An agent that crashed before the broker acked seq 5 publishes it again, stamped anew.
    store.write_batch([row(5, T0)])
    store.write_batch([row(5, T0 + 30)])
    assert [r.ts for r in store.read_range(row(5).device_id, 0, 1e10)] == [T0]


def test_a_new_epoch_starts_new_rows_at_seq_0(store: SqliteStore) -> None:
    store.write_batch([row(i, epoch=1) for i in range(3)])
    store.write_batch([row(i, T0 + 100 + i, epoch=2) for i in range(3)])  # state wiped
    store.write_batch([row(i, T0 + 200 + i, epoch=None) for i in range(3)])  # no epoch
    store.write_batch([row(i, T0 + 300 + i, epoch=None) for i in range(3)])  # redelivered
    got = [(r.epoch, r.seq) for r in store.read_range(row(0).device_id, 0, 1e10)]
    assert got == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (None, 0), (None, 1), (None, 2)]


def test_devices_are_separate(store: SqliteStore) -> None:
    store.write_batch([row(0, device="a"), row(0, device="b")])
    assert [r.device_id for r in store.recent("a", 0)] == ["a"]
    assert count(store) == 2


def test_a_failing_batch_stores_nothing(store: SqliteStore) -> None:
    bad = row(3)._replace(device_name=None)  # type: ignore[arg-type]  # NOT NULL: fails
    with pytest.raises(sqlite3.IntegrityError):
        store.write_batch([row(0), row(1), row(2), bad])
    assert count(store) == 0
    store.write_batch([row(0)])  # the connection is usable again
    assert count(store) == 1


def test_a_timestamp_out_of_range_is_refused_before_the_database(store: SqliteStore) -> None:
    for ts in (float("nan"), float("inf"), -1.0, 1e300):
        with pytest.raises(ValueError, match="outside"):
            store.write_batch([row(0), row(1, ts)])
    assert count(store) == 0


def test_recent_is_the_newest_rows_oldest_first(store: SqliteStore) -> None:
    store.write_batch([row(i) for i in range(50)])
    got = store.recent(row(0).device_id, T0 + 10, limit=5)
    assert [r.seq for r in got] == [45, 46, 47, 48, 49]
    assert [r.seq for r in store.recent(row(0).device_id, T0 + 47)] == [47, 48, 49]
    assert store.recent("nobody", 0) == []


def test_read_range_is_half_open_and_ordered(store: SqliteStore) -> None:
    store.write_batch([row(i) for i in reversed(range(20))])
    got = [r.seq for r in store.read_range(row(0).device_id, T0 + 5, T0 + 10)]
    assert got == [5, 6, 7, 8, 9]
    assert list(store.read_range(row(0).device_id, T0 + 30, T0 + 40)) == []


def test_read_range_pages_through_ties(store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_module, "READ_CHUNK", 7)
    # Many readings share one ts (two epochs, a burst): the keyset must neither skip nor repeat.
    rows = [row(i, T0 + i // 10, epoch=e) for e in (1, 2) for i in range(53)]
    store.write_batch(rows)
    got = list(store.read_range(row(0).device_id, 0, 1e10))
    assert len(got) == len(rows)
    assert got == sorted(rows, key=lambda r: (r.ts, r.epoch, r.seq))


def test_retention_deletes_rows_older_than_n_days(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "DELETE_CHUNK", 10)  # several short transactions
    now = T0 + 30 * DAY
    old = [row(i, now - 8 * DAY + i) for i in range(25)]
    edge = [row(100, now - 7 * DAY), row(101, now - 7 * DAY - 0.001)]
    new = [row(200 + i, now - DAY + i) for i in range(5)]
    others = [row(i, now - 9 * DAY + i * DAY, device=f"other-{i}") for i in range(4)]
    store.write_batch(old + edge + new + others)
    store.write_anomalies([AnomalyRow(DEVICE_A, 1, now - 9 * DAY, "temp", "spike", 0.0, 9.0)])
    result = store.apply_retention(now)
    assert result.rows_deleted == 26 + 2  # other-0 and other-1 are older than 7 days
    assert result.cutoff == now - 7 * DAY
    assert sorted(r.seq for r in store.read_range(DEVICE_A, 0, 1e10)) == [100, *range(200, 205)]
    assert [d for d in (f"other-{i}" for i in range(4)) if store.recent(d, 0)] == [
        "other-2",
        "other-3",
    ]
    assert count(store, "anomalies") == 0


def test_without_retention_everything_stays(tmp_path: Path) -> None:
    with SqliteStore(str(tmp_path / "t.db"), retention_days=None) as s:
        s.write_batch([row(0, 1.0)])
        assert s.apply_retention(T0).rows_deleted == 0
        assert count(s) == 1


def test_anomalies_are_idempotent_and_read_back(store: SqliteStore) -> None:
    found = [
        AnomalyRow("a", 1, T0, "temp", "glitch", 0.0, 0.97, '{"expected": 22.1}'),
        AnomalyRow("a", 1, T0, "humidity", "glitch", 1.1, 0.95),
        AnomalyRow("a", 9, T0 + 5, "co", "spike", 0.014, 0.9, None),
    ]
    store.write_anomalies(found)
    store.write_anomalies(found[:2])
    assert store.read_anomalies("a", T0, T0 + 5) == sorted(found[:2], key=lambda a: a.sensor)
    assert len(store.read_anomalies("a", 0, 1e10)) == 3


def test_anomalies_from_the_engine_with_non_finite_numbers(store: SqliteStore) -> None:
    from edge_consumer.anomaly.record import Anomaly
    from edge_consumer.store import anomaly_row

    found = [
        Anomaly("a", "*", "dropout", 4, T0, float("inf"), float("nan"), "silent"),
        Anomaly("a", "temp,humidity", "spike", 5, T0 + 1, 0.0, 12.5, "temp 0.0"),
    ]
    store.write_anomalies([anomaly_row(a) for a in found])
    assert store.read_anomalies("a", 0, 1e10) == [
        AnomalyRow("a", 4, T0, "*", "dropout", None, None, "silent"),
        AnomalyRow("a", 5, T0 + 1, "temp,humidity", "spike", 0.0, 12.5, "temp 0.0"),
    ]


def test_data_survives_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    with SqliteStore(path) as s:
        s.write_batch([row(i) for i in range(10)])
    with SqliteStore(path, create=False) as s:
        assert len(list(s.read_range(row(0).device_id, 0, 1e10))) == 10


def test_create_false_refuses_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open"):
        SqliteStore(str(tmp_path / "missing.db"), create=False)
    assert not (tmp_path / "missing.db").exists()
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE x (y)").connection.commit()
    with pytest.raises(StoreError, match="not a telemetry store"):
        SqliteStore(str(tmp_path / "other.db"), create=False)


# --- open_store -----------------------------------------------------------------------------


def test_open_store_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for url in (f"sqlite://{tmp_path}/a.db", f"sqlite:///{tmp_path}/a.db"):  # / and //
        with open_store(url) as s:
            assert isinstance(s, SqliteStore) and Path(s.path) == tmp_path / "a.db"
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:rel.db", retention_days=3) as s:
        assert isinstance(s, SqliteStore)
        assert s.path == "rel.db" and s.retention_days == 3
    with open_store(f"sqlite://{tmp_path}/b.db?synchronous=full") as s:
        assert isinstance(s, SqliteStore)
        assert s.connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://host/x.db", "names no host"),
        ("sqlite://", "no file path"),
        ("sqlite:///tmp/x.db?journal=off", "unknown option journal"),
        ("sqlite:///tmp/x.db?synchronous=off", "synchronous must be"),
        ("mysql://u:secret@h/db", "unknown store URL"),
        ("/tmp/x.db", "unknown store URL"),
    ],
)
def test_open_store_bad_urls(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as info:
        open_store(url)
    assert "secret" not in str(info.value)


def test_open_store_bad_retention(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="retention_days"):
        open_store(f"sqlite://{tmp_path}/a.db", retention_days=0)


# --- telemetry_row ------------------------------------------------------------------------


def validated(**overrides: Any) -> Telemetry:
    fields: dict[str, Any] = {
        "device_id": "0a:ed:9e:00:00:01",
        "device_name": "pi-0001",
        "ts": 1795759202.77,
        "seq": 41,
        "data": {
            "temp": 22.7,
            "humidity": 51,  # an integer is a valid number
            "co": 0.004956,
            "lpg": 0.007651,
            "smoke": 0.020411,
            "light": False,
            "motion": True,
        },
        "source": {"device": "b8:27:eb:bf:9d:51", "ts": 1594512094.3859746},
        "epoch": 61008130096940,
    }
    fields.update(overrides)
    payload = json.dumps({k: v for k, v in fields.items() if v is not None}).encode()
    result = Validator().validate(protocol.telemetry_topic(fields["device_id"]), payload)
    assert isinstance(result, Telemetry), result
    return result


def test_telemetry_row_from_a_validated_message() -> None:
    r = telemetry_row(validated())
    assert r == TelemetryRow(
        "0a:ed:9e:00:00:01", 41, 61008130096940, 1795759202.77, 1594512094.3859746,
        "pi-0001", "b8:27:eb:bf:9d:51", 22.7, 51.0, 0.004956, 0.007651, 0.020411, False, True,
    )  # fmt: skip
    assert type(r.humidity) is float


def test_telemetry_row_tolerates_a_missing_or_odd_source() -> None:
    assert telemetry_row(validated(source=None, epoch=None))[2:7:2] == (None, None, None)
    odd = telemetry_row(validated(source={"device": 5, "ts": True}))
    assert (odd.source_ts, odd.source_device) == (None, None)


def test_telemetry_row_refuses_an_impossible_clock() -> None:
    with pytest.raises(ValueError, match="outside"):
        telemetry_row(validated(ts=1e300))
