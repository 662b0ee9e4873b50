"""One bad row never stops the fleet: the writer isolates a row the database refuses on its own,
keeps it as a dead letter, and acknowledges every row in put order; an outage still holds
every acknowledgement and retries.

Every test here goes through the real BatchWriter into a real SQLite file.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import pytest
from edge_consumer.store import (
    BatchWriter,
    Isolation,
    TelemetryRow,
    dead_letter,
    open_store,
)
from edge_consumer.store import sqlite as sqlite_module
from edge_consumer.store.sqlite import SqliteStore
from support.polling import wait_until

T0 = 1_795_910_400.0
DEVICE = "0a:ed:9e:00:00:01"
TOO_BIG = 2**63  # validation takes any seq >= 0; neither database holds it
# What an operator may add to the telemetry table: a reading of more than 100 % humidity fails.
HUMIDITY_TRIGGER = """
CREATE TRIGGER humidity_at_most_100 BEFORE INSERT ON telemetry WHEN NEW.humidity > 100
BEGIN SELECT RAISE(ABORT, 'humidity above 100 %'); END
"""


def row(seq: int, humidity: float = 50.0) -> TelemetryRow:
    return TelemetryRow(
        DEVICE, seq, 7, T0 + (seq % 10**6), None, "pi-0001", None,
        22.0, humidity, 0.005, 0.007, 0.02, False, False,
    )  # fmt: skip


def stored_seqs(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT seq FROM telemetry ORDER BY seq")]


class Acks:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self._lock = threading.Lock()

    def ack(self, seq: int) -> Callable[[], None]:
        def done() -> None:
            with self._lock:
                self.seqs.append(seq)

        return done


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with SqliteStore(str(tmp_path / "t.db")) as s:
        yield s


def test_a_row_the_database_rejects_is_dead_lettered_and_the_rest_stored_and_acked(
    store: SqliteStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.connection.execute(HUMIDITY_TRIGGER)
    bad = {137: row(137, humidity=150.0), 642: row(TOO_BIG)}
    acks = Acks()
    writer = BatchWriter(
        store.write_batch, batch_rows=200, batch_delay=0.01, isolation=store.isolation()
    ).start()
    for seq in range(1000):
        writer.put(bad.get(seq, row(seq)), acks.ack(seq))
    assert writer.close(timeout=30)
    assert acks.seqs == list(range(1000))  # every one, in put order: the bad ones too
    assert stored_seqs(tmp_path / "t.db") == [s for s in range(1000) if s not in bad]
    letters = store.read_dead_letters()
    assert [(d.kind, d.device_id, d.key) for d in letters] == [
        ("telemetry", DEVICE, f'["{DEVICE}", 7, 137]'),
        ("telemetry", DEVICE, f'["{DEVICE}", 7, {TOO_BIG}]'),
    ]
    assert letters[0].error == "IntegrityError: humidity above 100 %"
    assert letters[1].error.startswith("OverflowError: Python int too large")
    assert [d.recover() for d in letters] == list(bad.values())  # nothing is lost
    stats = writer.stats()
    assert stats.dead_letters == 2 and stats.outages == 0 and not stats.in_outage
    refusals = [r.getMessage() for r in caplog.records if "dead letter" in r.getMessage()]
    assert len(refusals) == 2 and "humidity above 100 %" in refusals[0]


def test_a_lone_bad_row_in_a_batch_of_one(store: SqliteStore, tmp_path: Path) -> None:
    acks = Acks()
    writer = BatchWriter(store.write_batch, batch_delay=0, isolation=store.isolation()).start()
    writer.put(row(TOO_BIG), acks.ack(0))
    assert writer.flush(timeout=10)
    writer.put(row(1), acks.ack(1))
    assert writer.close(timeout=10)
    assert acks.seqs == [0, 1]
    assert stored_seqs(tmp_path / "t.db") == [1]
    assert len(store.read_dead_letters()) == 1


def test_without_isolation_a_bad_row_holds_every_ack(store: SqliteStore, tmp_path: Path) -> None:
    """The stall the dead letters end: the same bad row, no isolation."""
    acks = Acks()
    writer = BatchWriter(
        store.write_batch, batch_rows=10, batch_delay=0, retry_initial=0.01, retry_max=0.02
    ).start()
    for seq in range(30):
        writer.put(row(TOO_BIG) if seq == 3 else row(seq), acks.ack(seq))
    assert wait_until(lambda: writer.stats().write_failures >= 5, 10)
    assert acks.seqs == [] and writer.stats().in_outage
    writer.abandon()


class Flaky:
    """write_batch, probe and dead-letter keeping that can fail like a database going away."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.down = threading.Event()  # every call raises an OperationalError
        self.unreachable = threading.Event()  # the probe alone fails
        self.keeping_fails = threading.Event()  # write_dead_letters alone fails
        self.attempts = 0

    def _check(self) -> None:
        if self.down.is_set():
            raise sqlite3.OperationalError("disk I/O error")

    def write(self, rows: Sequence[TelemetryRow]) -> None:
        self.attempts += 1
        self._check()
        self.store.write_batch(rows)

    def probe(self) -> None:
        self._check()
        if self.unreachable.is_set():
            raise sqlite3.OperationalError("unable to open database file")
        self.store.ping()

    def keep(self, refused: Sequence[tuple[TelemetryRow, BaseException]]) -> None:
        self._check()
        if self.keeping_fails.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        self.store.write_dead_letters([dead_letter(r, e) for r, e in refused])

    def isolation(self) -> Isolation[TelemetryRow]:
        return Isolation(self.probe, self.store.transient, self.keep)


def flaky_writer(flaky: Flaky) -> BatchWriter[TelemetryRow]:
    return BatchWriter(
        flaky.write,
        batch_rows=20,
        batch_delay=0.01,
        retry_initial=0.01,
        retry_max=0.05,
        isolation=flaky.isolation(),
    ).start()


def test_an_outage_still_holds_every_ack_and_dead_letters_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.db"
    flaky = Flaky(SqliteStore(str(path)))
    acks = Acks()
    writer = flaky_writer(flaky)
    for seq in range(20):
        writer.put(row(seq), acks.ack(seq))
    assert writer.flush(timeout=10)
    caplog.set_level(logging.INFO, logger="edge_consumer.store.writer")
    flaky.down.set()
    for seq in range(20, 100):
        writer.put(row(seq), acks.ack(seq))
    assert wait_until(lambda: flaky.attempts >= 10, 10)
    assert acks.seqs == list(range(20))
    assert writer.stats().in_outage and writer.stats().dead_letters == 0
    flaky.down.clear()
    assert writer.flush(timeout=10)
    assert acks.seqs == list(range(100))
    assert stored_seqs(path) == list(range(100))
    assert flaky.store.read_dead_letters() == []
    lines = [r.levelno for r in caplog.records if r.name == "edge_consumer.store.writer"]
    assert lines == [logging.ERROR, logging.WARNING]  # the outage's two lines, no dead letter
    writer.close(timeout=5)


@pytest.mark.parametrize("failure", ["unreachable", "keeping_fails"])
def test_a_bad_row_is_dead_lettered_only_once_the_database_answers_and_keeps_it(
    tmp_path: Path, failure: str
) -> None:
    """A refused row while the probe fails, or while the dead letter cannot be written, is an
    outage: nothing is acked, nothing is lost. Once both work, the row is kept and acked."""
    path = tmp_path / "t.db"
    flaky = Flaky(SqliteStore(str(path)))
    getattr(flaky, failure).set()
    acks = Acks()
    writer = flaky_writer(flaky)
    for seq in range(40):
        writer.put(row(TOO_BIG) if seq == 25 else row(seq), acks.ack(seq))
    assert wait_until(lambda: writer.stats().write_failures >= 5, 10)
    assert acks.seqs == list(range(20))  # the first batch; the bad one's batch is held
    assert writer.stats().in_outage and flaky.store.read_dead_letters() == []
    getattr(flaky, failure).clear()
    assert writer.flush(timeout=10)
    assert acks.seqs == list(range(40))
    assert stored_seqs(path) == [s for s in range(40) if s != 25]
    assert [d.recover() for d in flaky.store.read_dead_letters()] == [row(TOO_BIG)]
    assert writer.stats().dead_letters == 1 and not writer.stats().in_outage
    writer.close(timeout=5)


def test_a_transient_error_while_isolating_is_an_outage(tmp_path: Path) -> None:
    """The batch fails for its bad row, then the database goes while the halves are written:
    the writer holds the whole batch (its written half is skipped as duplicates later)."""
    path = tmp_path / "t.db"
    flaky = Flaky(SqliteStore(str(path)))
    real_write = flaky.write
    calls = 0

    def write(rows: Sequence[TelemetryRow]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # the first batch, its first half: the database goes away
            flaky.down.set()
        real_write(rows)

    acks = Acks()
    writer = BatchWriter(
        write, batch_rows=20, batch_delay=0.05, retry_initial=0.01, retry_max=0.05,
        isolation=flaky.isolation(),
    ).start()  # fmt: skip
    writer.put(row(0), acks.ack(0))
    assert writer.flush(timeout=10)  # call 1
    for seq in range(1, 21):
        writer.put(row(TOO_BIG) if seq == 15 else row(seq), acks.ack(seq))
    assert wait_until(lambda: writer.stats().in_outage, 10)
    assert acks.seqs == [0] and writer.stats().dead_letters == 0
    flaky.down.clear()
    assert writer.flush(timeout=10)
    assert acks.seqs == list(range(21))
    assert stored_seqs(path) == [s for s in range(21) if s != 15]
    assert len(flaky.store.read_dead_letters()) == 1
    writer.close(timeout=5)


def test_a_redelivered_dead_letter_is_kept_once(store: SqliteStore) -> None:
    letter = dead_letter(row(TOO_BIG), OverflowError("too big"))
    store.write_dead_letters([letter])
    store.write_dead_letters([letter._replace(at=letter.at + 5, error="again")])
    assert store.read_dead_letters() == [letter]


def test_dead_letters_keep_what_no_text_column_could(store: SqliteStore) -> None:
    odd = row(1)._replace(device_id="dev\x00\ud800", device_name="nul\x00", temp=float("nan"))
    letter = dead_letter(odd, ValueError("bad\nvalue\x00"))
    assert (
        letter.device_id == "dev\\u0000\\ud800" and letter.error == "ValueError: bad value\\u0000"
    )
    assert letter.key.isascii() and letter.fields.isascii()
    store.write_dead_letters([letter])
    (kept,) = store.read_dead_letters()
    recovered = kept.recover()
    assert isinstance(recovered, TelemetryRow)
    assert recovered._replace(temp=0.0) == odd._replace(temp=0.0) and recovered.temp != 22.0


def test_the_writer_transient_rule_of_sqlite(store: SqliteStore) -> None:
    assert store.transient(sqlite3.OperationalError("database is locked"))
    assert store.transient(sqlite3.OperationalError("database or disk is full"))
    assert store.transient(sqlite3.DatabaseError("database disk image is malformed"))
    assert store.transient(OSError(5, "I/O error"))
    assert not store.transient(sqlite3.IntegrityError("CHECK constraint failed"))
    assert not store.transient(OverflowError("Python int too large to convert"))
    assert not store.transient(ValueError("timestamp outside 1970..2100"))
    store.ping()


def test_a_version_1_file_gains_the_dead_letter_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    SqliteStore(str(path)).close()
    with sqlite3.connect(path) as conn:  # as the previous release left it
        conn.execute("DROP TABLE dead_letters")
        conn.execute("PRAGMA user_version = 1")
    with open_store(f"sqlite:///{path}", create=False) as old:  # an export reads it as it is
        assert old.recent(DEVICE, 0) == []
    with SqliteStore(str(path)) as s:  # the consumer adds the table
        s.write_dead_letters([dead_letter(row(TOO_BIG), OverflowError("x"))])
        assert len(s.read_dead_letters()) == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_module.SCHEMA_VERSION


def test_retention_removes_old_dead_letters(tmp_path: Path) -> None:
    with SqliteStore(str(tmp_path / "t.db"), retention_days=7) as s:
        now = T0 + 30 * 86_400
        old, new = (
            dead_letter(row(i), ValueError("x"), at=now - d * 86_400) for i, d in ((1, 8), (2, 6))
        )
        s.write_dead_letters([old, new])
        s.apply_retention(now)
        assert s.read_dead_letters() == [new]
