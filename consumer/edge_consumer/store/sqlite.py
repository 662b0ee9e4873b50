"""SqliteStore: the embedded default, one file in WAL mode.

Durability: in WAL mode a commit appends to the -wal file. With synchronous=NORMAL (default
here) that append is not fsync'ed at each commit, only at checkpoints: a killed process (even
SIGKILL mid-transaction) loses nothing committed, because the bytes are in the kernel's page
cache, and its uncommitted transaction is rolled back on the next open. Only a power loss or
kernel crash can lose the last commits (the file stays consistent); those rows were acked, so
the broker will not resend them. synchronous=FULL fsyncs every commit and closes that window
for about one fsync per batch (`sqlite:///path?synchronous=full`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any, Optional

from .base import DEFAULT_RETENTION_DAYS, StoreError, TelemetryStore
from .model import (
    NO_EPOCH,
    AnomalyRow,
    DeadLetter,
    RetentionResult,
    TelemetryRow,
    anomaly_params,
    check_ts,
)

log = logging.getLogger(__name__)

# 1: telemetry and anomalies; 2: dead_letters (added to a version 1 file when it is opened
# to write; a version 1 file is still read, as by an export).
SCHEMA_VERSION = 2
SYNCHRONOUS = ("normal", "full")
BUSY_TIMEOUT_S = 10.0  # another connection's write (an export, retention) waits, not fails
READ_CHUNK = 5000
DELETE_CHUNK = 5000  # retention deletes in short transactions, so batches interleave

COLUMNS = (
    "device_id, seq, epoch, ts, source_ts, device_name, source_device, "
    "temp, humidity, co, lpg, smoke, light, motion"
)
ANOMALY_COLUMNS = "device_id, seq, ts, sensor, kind, value, score, detail"
DEAD_LETTER_COLUMNS = "kind, device_id, row_key, row_fields, error, at"

# WITHOUT ROWID: the key is the table's own b-tree, no second copy of it. The (device_id, ts,
# epoch, seq) index serves recent(), read_range()'s keyset pages in order and retention (per
# device). Every index costs about as much per insert as the table itself, so there is no
# index on ts alone (measured: a third more rows/s without it).
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS telemetry (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    ts REAL NOT NULL,
    source_ts REAL,
    device_name TEXT NOT NULL,
    source_device TEXT,
    temp REAL NOT NULL,
    humidity REAL NOT NULL,
    co REAL NOT NULL,
    lpg REAL NOT NULL,
    smoke REAL NOT NULL,
    light INTEGER NOT NULL,
    motion INTEGER NOT NULL,
    PRIMARY KEY (device_id, epoch, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS telemetry_device_ts ON telemetry (device_id, ts, epoch, seq);
CREATE TABLE IF NOT EXISTS anomalies (
    device_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts REAL NOT NULL,
    sensor TEXT NOT NULL,
    kind TEXT NOT NULL,
    value REAL,
    score REAL,
    detail TEXT,
    PRIMARY KEY (device_id, seq, ts, sensor, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS anomalies_device_ts ON anomalies (device_id, ts);
CREATE INDEX IF NOT EXISTS anomalies_ts ON anomalies (ts);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    device_id TEXT NOT NULL,
    row_key TEXT NOT NULL,
    row_fields TEXT NOT NULL,
    error TEXT NOT NULL,
    at REAL NOT NULL,
    UNIQUE (kind, row_key)
);
PRAGMA user_version = {SCHEMA_VERSION};
"""

_INSERT = f"INSERT INTO telemetry ({COLUMNS}) VALUES ({', '.join('?' * 14)}) ON CONFLICT DO NOTHING"
_INSERT_ANOMALY = (
    f"INSERT INTO anomalies ({ANOMALY_COLUMNS}) VALUES ({', '.join('?' * 8)}) "
    "ON CONFLICT DO NOTHING"
)
_INSERT_DEAD_LETTER = (
    f"INSERT INTO dead_letters ({DEAD_LETTER_COLUMNS}) VALUES ({', '.join('?' * 6)}) "
    "ON CONFLICT DO NOTHING"
)
_DEAD_LETTERS = f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters ORDER BY id"
_RECENT = (
    f"SELECT {COLUMNS} FROM telemetry WHERE device_id = ? AND ts >= ? "
    "ORDER BY ts DESC, epoch DESC, seq DESC LIMIT ?"
)
_RANGE_FIRST = (
    f"SELECT {COLUMNS} FROM telemetry WHERE device_id = ? AND ts >= ? AND ts < ? "
    "ORDER BY ts, epoch, seq LIMIT ?"
)
_RANGE_NEXT = (
    f"SELECT {COLUMNS} FROM telemetry WHERE device_id = ? AND (ts, epoch, seq) > (?, ?, ?) "
    "AND ts < ? ORDER BY ts, epoch, seq LIMIT ?"
)
_ANOMALIES = (
    f"SELECT {ANOMALY_COLUMNS} FROM anomalies WHERE device_id = ? AND ts >= ? AND ts < ? "
    "ORDER BY ts, seq, sensor, kind"
)
# The devices, by skipping through the primary key: one index seek per device.
_DEVICES = """
WITH RECURSIVE d(id) AS (
    SELECT min(device_id) FROM telemetry
    UNION ALL
    SELECT (SELECT min(device_id) FROM telemetry WHERE device_id > d.id) FROM d
    WHERE d.id IS NOT NULL
)
SELECT id FROM d WHERE id IS NOT NULL
"""
_EXPIRE = (
    "DELETE FROM telemetry WHERE device_id = ?1 AND (epoch, seq) IN "
    "(SELECT epoch, seq FROM telemetry WHERE device_id = ?1 AND ts < ?2 LIMIT ?3)"
)
_EXPIRE_ANOMALIES = (
    "DELETE FROM anomalies WHERE (device_id, seq, ts, sensor, kind) IN "
    "(SELECT device_id, seq, ts, sensor, kind FROM anomalies WHERE ts < ?2 LIMIT ?3)"
)

_EXPIRE_DEAD_LETTERS = (
    "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters WHERE at < ?2 LIMIT ?3)"
)


def _params(row: TelemetryRow) -> tuple[Any, ...]:
    epoch = NO_EPOCH if row.epoch is None else row.epoch
    return (row.device_id, row.seq, epoch, check_ts(row.ts), *row[4:])


def _key(params: tuple[Any, ...]) -> tuple[Any, ...]:
    return params[0], params[2], params[1]  # device_id, epoch, seq


def _row(values: Sequence[Any]) -> TelemetryRow:
    device_id, seq, epoch, ts, source_ts, name, source_device = values[:7]
    temp, humidity, co, lpg, smoke, light, motion = values[7:]
    return TelemetryRow(
        device_id,
        seq,
        None if epoch == NO_EPOCH else epoch,
        ts,
        source_ts,
        name,
        source_device,
        temp,
        humidity,
        co,
        lpg,
        smoke,
        bool(light),
        bool(motion),
    )


class SqliteStore(TelemetryStore):
    def __init__(
        self,
        path: str,
        *,
        retention_days: Optional[int] = DEFAULT_RETENTION_DAYS,
        synchronous: str = "normal",
        create: bool = True,
    ) -> None:
        if synchronous not in SYNCHRONOUS:
            raise StoreError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        self.path = path
        self.retention_days = retention_days
        self._lock = threading.RLock()
        if not create and not os.path.exists(path):
            raise StoreError(f"cannot open SQLite store {path}: no such file")
        try:
            # create=False: mode=rw refuses to make a new, empty file out of a mistyped path.
            target = path
            if not create:
                target = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=rw"
            # isolation_level=None: the module opens no transactions itself; each method
            # says BEGIN IMMEDIATE/COMMIT. check_same_thread=False: the lock serializes use.
            self._conn = sqlite3.connect(
                target,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,
                check_same_thread=False,
                uri=not create,
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite store {path}: {e}") from None
        try:
            self._setup(synchronous, create)
        except BaseException:
            self._conn.close()
            raise

    def _setup(self, synchronous: str, create: bool) -> None:
        try:
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":  # e.g. a network file system without shared memory
                raise StoreError(f"SQLite store {self.path}: WAL mode unavailable ({mode})")
            self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"SQLite store {self.path} has schema {version}, newer than this "
                    f"edge-fleet's {SCHEMA_VERSION}"
                )
            if version == 0 and not create:
                raise StoreError(f"{self.path} is not a telemetry store")
            if version < SCHEMA_VERSION and create:
                self._conn.executescript(_SCHEMA)  # IF NOT EXISTS: adds what is new
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite store {self.path}: {e}") from None

    @property
    def connection(self) -> sqlite3.Connection:
        """The underlying connection, for tests and diagnostics."""
        return self._conn

    def _write(self, sql: str, params: list[tuple[Any, ...]]) -> None:
        with self._lock:
            conn = self._conn
            # IMMEDIATE takes the write lock up front: waiting for it honours busy_timeout,
            # where a deferred transaction upgrading later could fail at once with BUSY.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql, params)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # some errors (disk full) have rolled back already
                    conn.execute("ROLLBACK")
                raise

    def write_batch(self, rows: Sequence[TelemetryRow]) -> None:
        if rows:
            # In key order, consecutive inserts land on the same b-tree pages: measured 40%
            # more rows/s than the interleaved order of a fleet. The sort is stable, so of two
            # copies of one reading the first still wins.
            self._write(_INSERT, sorted(map(_params, rows), key=_key))

    def write_anomalies(self, rows: Sequence[AnomalyRow]) -> None:
        if rows:
            self._write(_INSERT_ANOMALY, [tuple(anomaly_params(r)) for r in rows])

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if letters:
            self._write(_INSERT_DEAD_LETTER, [tuple(letter) for letter in letters])

    def read_dead_letters(self) -> list[DeadLetter]:
        with self._lock:
            return [DeadLetter(*v) for v in self._conn.execute(_DEAD_LETTERS).fetchall()]

    def ping(self) -> None:
        with self._lock:  # reads the file's schema page: the file is there and readable
            self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()

    def transient(self, error: BaseException) -> bool:
        # A constraint (a CHECK, a trigger's RAISE), a value SQLite cannot bind (an integer
        # beyond 64 bits, a lone surrogate): the row's. Busy, locked, I/O, a full disk, a
        # read-only or corrupt file: the database's (OperationalError, DatabaseError).
        row_errors = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.ProgrammingError)
        if isinstance(error, row_errors):
            return False
        return isinstance(error, (sqlite3.Error, OSError, MemoryError))

    def recent(self, device_id: str, since_ts: float, limit: int = 1000) -> list[TelemetryRow]:
        with self._lock:
            values = self._conn.execute(_RECENT, (device_id, since_ts, limit)).fetchall()
        return [_row(v) for v in reversed(values)]

    def read_range(self, device_id: str, since: float, until: float) -> Iterator[TelemetryRow]:
        with self._lock:
            page = self._conn.execute(
                _RANGE_FIRST, (device_id, since, until, READ_CHUNK)
            ).fetchall()
        while page:
            yield from map(_row, page)
            if len(page) < READ_CHUNK:
                return
            _, seq, epoch, ts = page[-1][:4]
            with self._lock:
                page = self._conn.execute(
                    _RANGE_NEXT, (device_id, ts, epoch, seq, until, READ_CHUNK)
                ).fetchall()

    def read_anomalies(self, device_id: str, since: float, until: float) -> list[AnomalyRow]:
        with self._lock:
            values = self._conn.execute(_ANOMALIES, (device_id, since, until)).fetchall()
        return [AnomalyRow(*v) for v in values]

    def _expire(self, sql: str, cutoff: float, device: Optional[str] = None) -> int:
        deleted = 0
        while True:
            with self._lock:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    count = self._conn.execute(sql, (device, cutoff, DELETE_CHUNK)).rowcount
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            deleted += count
            if count < DELETE_CHUNK:
                return deleted

    def apply_retention(self, now: Optional[float] = None) -> RetentionResult:
        cutoff = self.cutoff(now)
        if self.retention_days is None:
            return RetentionResult(cutoff, 0)
        with self._lock:
            devices = [r[0] for r in self._conn.execute(_DEVICES)]
        deleted = sum(self._expire(_EXPIRE, cutoff, device) for device in devices)
        self._expire(_EXPIRE_ANOMALIES, cutoff)
        self._expire(_EXPIRE_DEAD_LETTERS, cutoff)
        if deleted:
            log.info(
                "retention: deleted %d readings older than %d days", deleted, self.retention_days
            )
        return RetentionResult(cutoff, deleted)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
