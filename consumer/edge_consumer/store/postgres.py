"""PostgresStore: PostgreSQL through psycopg 3, partitioned by day for cheap retention.

`telemetry` and `anomalies` are partitioned by RANGE on the reading's device timestamp, one
partition per UTC day (partitions.py). Partitions are made ahead (today and tomorrow, at open
and by apply_retention) and on demand for a batch that needs another day (a backlog after an
outage, a device with a wrong clock); retention DROPs whole days, which costs no vacuum.

Deduplication. A unique constraint on a partitioned table must contain the partition key, so
the primary key is (device_id, epoch, seq, ts). That alone catches MQTT redeliveries: they are
the same bytes, hence the same ts. It does not catch an agent that crashed before the broker
acked and republished the reading with a new ts (see base.py). So the insert also skips a row
whose (device_id, epoch, seq) is already stored under any ts. Probing every partition for
every row would cost one index lookup per partition per row; `telemetry_heads` keeps the
highest stored seq per (device_id, epoch), updated in the same transaction, and only rows at or
below it (redeliveries, republished readings, a device's first batch) are probed, by index.
This holds for one writer per device, which is the consumer's design: two writers committing
the same republished reading at the same moment could both store it.

Batches are loaded into a temporary staging table with COPY (measured faster than executemany,
bench/store_rate.py) and moved with one INSERT ... SELECT ... ON CONFLICT DO NOTHING, in one
transaction. Timestamps go over the wire as datetimes rounded to microseconds the same way the
partition arithmetic rounds them; reads return them as floats from those datetimes.

Connects by DSN (libpq: a Unix socket, or TCP with sslmode and the rest from the DSN or the PG*
environment). After a connection error the next call reconnects, so a retrying caller
(BatchWriter) rides out a server restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import date, datetime
from typing import Any, Optional, TypeVar

import psycopg
from psycopg import sql

from .base import DEFAULT_RETENTION_DAYS, StoreError, TelemetryStore
from .model import (
    NO_EPOCH,
    TS_MAX,
    TS_MIN,
    AnomalyRow,
    DeadLetter,
    RetentionResult,
    TelemetryRow,
    anomaly_params,
    check_ts,
)
from .partitions import (
    day_bounds,
    days_ahead,
    days_for,
    expired_days,
    partition_day,
    partition_name,
    to_datetime,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
Connection = psycopg.Connection[Any]

TABLES = ("telemetry", "anomalies")
LOADS = ("copy", "executemany")
PARTITIONS_AHEAD = 1  # tomorrow's partition exists before midnight
CONNECT_TIMEOUT_S = 10
# DDL (a new partition, a dropped one) waits at most this long for the parent's lock instead
# of queueing every insert and read behind a long-running query.
DDL_LOCK_TIMEOUT = "5s"
READ_CHUNK = 5000
_DDL_LOCK = 0x6564_6765  # pg_advisory_xact_lock key: one process at a time creates partitions

COLUMNS = (
    "device_id", "seq", "epoch", "ts", "source_ts", "device_name", "source_device",
    "temp", "humidity", "co", "lpg", "smoke", "light", "motion",
)  # fmt: skip
ANOMALY_COLUMNS = ("device_id", "seq", "ts", "sensor", "kind", "value", "score", "detail")
_COLS = ", ".join(COLUMNS)
_ANOMALY_COLS = ", ".join(ANOMALY_COLUMNS)
_READING_TYPES = """
    device_id text NOT NULL,
    seq bigint NOT NULL,
    epoch bigint NOT NULL,
    ts timestamptz NOT NULL,
    source_ts double precision,
    device_name text NOT NULL,
    source_device text,
    temp double precision NOT NULL,
    humidity double precision NOT NULL,
    co double precision NOT NULL,
    lpg double precision NOT NULL,
    smoke double precision NOT NULL,
    light boolean NOT NULL,
    motion boolean NOT NULL"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS telemetry ({_READING_TYPES},
    PRIMARY KEY (device_id, epoch, seq, ts)
) PARTITION BY RANGE (ts);
CREATE INDEX IF NOT EXISTS telemetry_device_ts ON telemetry (device_id, ts);
CREATE TABLE IF NOT EXISTS telemetry_heads (
    device_id text NOT NULL,
    epoch bigint NOT NULL,
    max_seq bigint NOT NULL,
    last_ts timestamptz NOT NULL,
    PRIMARY KEY (device_id, epoch)
);
CREATE TABLE IF NOT EXISTS anomalies (
    device_id text NOT NULL,
    seq bigint NOT NULL,
    ts timestamptz NOT NULL,
    sensor text NOT NULL,
    kind text NOT NULL,
    value double precision,
    score double precision,
    detail text,
    PRIMARY KEY (device_id, seq, ts, sensor, kind)
) PARTITION BY RANGE (ts);
CREATE INDEX IF NOT EXISTS anomalies_device_ts ON anomalies (device_id, ts);
CREATE TABLE IF NOT EXISTS dead_letters (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    device_id text NOT NULL,
    row_key text NOT NULL,
    row_fields text NOT NULL,
    error text NOT NULL,
    at double precision NOT NULL,
    UNIQUE (kind, row_key)
);
"""
# Per connection; ON COMMIT DELETE ROWS empties it at each commit (a rollback discards it too).
_STAGE = f"CREATE TEMP TABLE IF NOT EXISTS telemetry_stage ({_READING_TYPES}) ON COMMIT DELETE ROWS"
_COPY = f"COPY telemetry_stage ({_COLS}) FROM STDIN (FORMAT BINARY)"
_COPY_TYPES = (
    "text", "int8", "int8", "timestamptz", "float8", "text", "text",
    "float8", "float8", "float8", "float8", "float8", "bool", "bool",
)  # fmt: skip
_STAGE_INSERT = f"INSERT INTO telemetry_stage ({_COLS}) VALUES ({', '.join(['%s'] * 14)})"
# The probe is a LATERAL subquery with LIMIT: executed per row, as index lookups, and only
# for rows at or below their head (the one-time filter). Written as NOT EXISTS, the planner may
# choose a hashed subplan that reads every partition in full.
_MOVE = f"""
INSERT INTO telemetry ({_COLS})
SELECT DISTINCT ON (s.device_id, s.epoch, s.seq) {", ".join("s." + c for c in COLUMNS)}
FROM telemetry_stage s
LEFT JOIN telemetry_heads h ON h.device_id = s.device_id AND h.epoch = s.epoch
LEFT JOIN LATERAL (
    SELECT true AS stored FROM telemetry t
    WHERE (s.seq <= h.max_seq) IS NOT FALSE
      AND t.device_id = s.device_id AND t.epoch = s.epoch AND t.seq = s.seq
    LIMIT 1
) dup ON true
WHERE dup.stored IS NULL
ORDER BY s.device_id, s.epoch, s.seq, s.ts
ON CONFLICT DO NOTHING
"""
_HEADS = """
INSERT INTO telemetry_heads AS h (device_id, epoch, max_seq, last_ts)
SELECT device_id, epoch, max(seq), max(ts) FROM telemetry_stage
GROUP BY device_id, epoch ORDER BY device_id, epoch
ON CONFLICT (device_id, epoch) DO UPDATE
SET max_seq = GREATEST(h.max_seq, EXCLUDED.max_seq), last_ts = GREATEST(h.last_ts, EXCLUDED.last_ts)
"""
_INSERT_ANOMALY = (
    f"INSERT INTO anomalies ({_ANOMALY_COLS}) VALUES ({', '.join(['%s'] * 8)}) "
    "ON CONFLICT DO NOTHING"
)
_DEAD_LETTER_COLS = "kind, device_id, row_key, row_fields, error, at"
_INSERT_DEAD_LETTER = (
    f"INSERT INTO dead_letters ({_DEAD_LETTER_COLS}) VALUES ({', '.join(['%s'] * 6)}) "
    "ON CONFLICT DO NOTHING"
)
_DEAD_LETTERS = f"SELECT {_DEAD_LETTER_COLS} FROM dead_letters ORDER BY id"
# SQLSTATE classes of errors about the database, not the row (the others are mapped to
# OperationalError, InterfaceError or InternalError by psycopg too): 08 connection, 25
# transaction state, 40 rollback (serialization, deadlock), 53 resources (disk full, memory),
# 55 object state (lock_timeout), 57 operator (shutdown, cancel), 58 I/O, XX internal. 54
# (program limit exceeded, e.g. a row too big for an index) is the row's.
_ROW_SQLSTATE_CLASSES = ("54",)
_RECENT = (
    f"SELECT {_COLS} FROM telemetry WHERE device_id = %s AND ts >= %s "
    "ORDER BY ts DESC, epoch DESC, seq DESC LIMIT %s"
)
_RANGE_FIRST = (
    f"SELECT {_COLS} FROM telemetry WHERE device_id = %s AND ts >= %s AND ts < %s "
    "ORDER BY ts, epoch, seq LIMIT %s"
)
# `ts >= %s` repeats the row comparison's first column so the index bounds the scan.
_RANGE_NEXT = (
    f"SELECT {_COLS} FROM telemetry WHERE device_id = %s AND ts >= %s "
    "AND (ts, epoch, seq) > (%s, %s, %s) AND ts < %s ORDER BY ts, epoch, seq LIMIT %s"
)
_ANOMALIES = (
    f"SELECT {_ANOMALY_COLS} FROM anomalies WHERE device_id = %s AND ts >= %s AND ts < %s "
    "ORDER BY ts, seq, sensor, kind"
)
_PARTITIONS = """
SELECT c.relname FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = %s::regclass
"""


def _stage_row(row: TelemetryRow) -> tuple[Any, ...]:
    epoch = NO_EPOCH if row.epoch is None else row.epoch
    return (row.device_id, row.seq, epoch, to_datetime(check_ts(row.ts)), *row[4:])


def _row(values: Sequence[Any]) -> TelemetryRow:
    device_id, seq, epoch, ts, *rest = values
    return TelemetryRow(device_id, seq, None if epoch == NO_EPOCH else epoch, ts.timestamp(), *rest)


def _bound(ts: float) -> datetime:
    """A query bound as a datetime; stored readings all lie within [TS_MIN, TS_MAX)."""
    return to_datetime(min(max(ts, TS_MIN), TS_MAX))


class PostgresStore(TelemetryStore):
    def __init__(
        self,
        dsn: str,
        *,
        retention_days: Optional[int] = DEFAULT_RETENTION_DAYS,
        create: bool = True,
        load: str = "copy",
    ) -> None:
        if load not in LOADS:
            raise StoreError(f"load must be one of {', '.join(LOADS)}")
        try:
            params = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as e:
            raise StoreError(f"bad PostgreSQL DSN: {e}") from None
        self._connect_args: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            self._connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in params:
            self._connect_args["application_name"] = "edge-telemetry"
        self._dsn = dsn
        self.retention_days = retention_days
        self._create = create
        self._load = load
        self._lock = threading.RLock()
        self._conn: Optional[Connection] = None
        # Days with a partition, per table; None: read them from the catalog first.
        self._known: Optional[dict[str, set[date]]] = None
        try:
            self._connection()
            if create:
                self._ensure_days(days_ahead(time.time(), PARTITIONS_AHEAD))
        except psycopg.Error as e:
            self.close()
            # libpq's messages span lines (error, then a hint): one line for people and logs.
            message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
            raise StoreError(f"cannot open PostgreSQL store: {message}") from None

    # --- connection -----------------------------------------------------------------------

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if conn is not None:
            conn.close()
        self._conn = None
        self._known = None
        conn = psycopg.connect(self._dsn, **self._connect_args)
        try:
            conn.execute("SET TimeZone = 'UTC'")
            if self._create:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                    conn.execute(_SCHEMA)
            conn.execute(_STAGE)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _run(self, work: Callable[[Connection], T]) -> T:
        """work(conn) under the lock; after an error the partition cache is re-read."""
        with self._lock:
            try:
                return work(self._connection())
            except BaseException:
                self._known = None
                raise

    # --- partitions -----------------------------------------------------------------------

    def _partitions(self, conn: Connection, table: str) -> dict[date, str]:
        names = [r[0] for r in conn.execute(_PARTITIONS, (table,)).fetchall()]
        days = {partition_day(table, name): name for name in names}
        return {day: name for day, name in days.items() if day is not None}

    def _known_days(self, conn: Connection) -> dict[str, set[date]]:
        if self._known is None:
            self._known = {table: set(self._partitions(conn, table)) for table in TABLES}
        return self._known

    def _ensure_days(self, days: Iterable[date], tables: Sequence[str] = TABLES) -> None:
        def work(conn: Connection) -> None:
            known = self._known_days(conn)
            missing = [(t, d) for t in tables for d in sorted(set(days)) if d not in known[t]]
            if not missing:
                return
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
                for table, day in missing:
                    start, end = day_bounds(day)
                    conn.execute(
                        sql.SQL(
                            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} "
                            "FOR VALUES FROM ({}) TO ({})"
                        ).format(
                            sql.Identifier(partition_name(table, day)),
                            sql.Identifier(table),
                            sql.Literal(start),
                            sql.Literal(end),
                        )
                    )
            for table, day in missing:
                known[table].add(day)

        self._run(work)

    # --- writes ---------------------------------------------------------------------------

    def write_batch(self, rows: Sequence[TelemetryRow]) -> None:
        if not rows:
            return
        staged = [_stage_row(row) for row in rows]  # validates every ts before any I/O
        self._ensure_days(days_for(row.ts for row in rows), ("telemetry",))

        def work(conn: Connection) -> None:
            with conn.transaction(), conn.cursor() as cur:
                if self._load == "copy":
                    with cur.copy(_COPY) as copy:
                        copy.set_types(_COPY_TYPES)
                        for row in staged:
                            copy.write_row(row)
                else:
                    cur.executemany(_STAGE_INSERT, staged)
                cur.execute(_MOVE)
                cur.execute(_HEADS)

        self._run(work)

    def write_anomalies(self, rows: Sequence[AnomalyRow]) -> None:
        if not rows:
            return
        params = [
            (r.device_id, r.seq, to_datetime(r.ts), *r[3:]) for r in map(anomaly_params, rows)
        ]
        self._ensure_days({p[2].date() for p in params}, ("anomalies",))

        def work(conn: Connection) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_INSERT_ANOMALY, params)

        self._run(work)

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        params = [tuple(letter) for letter in letters]

        def work(conn: Connection) -> None:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(_INSERT_DEAD_LETTER, params)

        self._run(work)

    def read_dead_letters(self) -> list[DeadLetter]:
        values = self._run(lambda conn: conn.execute(_DEAD_LETTERS).fetchall())
        return [DeadLetter(*v) for v in values]

    def ping(self) -> None:
        self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    def transient(self, error: BaseException) -> bool:
        with self._lock:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:  # the connection went with it
                return True
        if isinstance(error, psycopg.Error):
            sqlstate = error.sqlstate or ""
            if sqlstate[:2] in _ROW_SQLSTATE_CLASSES:
                return False
            # Integrity (23), data (22), a trigger's RAISE (P0) and the driver's own refusals
            # of a value (DataError without a SQLSTATE) are the row's.
            return isinstance(
                error, (psycopg.OperationalError, psycopg.InterfaceError, psycopg.InternalError)
            )
        return isinstance(error, (OSError, MemoryError))

    # --- reads ----------------------------------------------------------------------------

    def recent(self, device_id: str, since_ts: float, limit: int = 1000) -> list[TelemetryRow]:
        def work(conn: Connection) -> list[Any]:
            return conn.execute(_RECENT, (device_id, _bound(since_ts), limit)).fetchall()

        return [_row(v) for v in reversed(self._run(work))]

    def read_range(self, device_id: str, since: float, until: float) -> Iterator[TelemetryRow]:
        def fetch(query: str, params: tuple[Any, ...]) -> list[Any]:
            return self._run(lambda conn: conn.execute(query, params).fetchall())

        end = _bound(until)
        page = fetch(_RANGE_FIRST, (device_id, _bound(since), end, READ_CHUNK))
        while page:
            yield from map(_row, page)
            if len(page) < READ_CHUNK:
                return
            _, seq, epoch, ts = page[-1][:4]  # ts: the stored datetime, exact for the keyset
            page = fetch(_RANGE_NEXT, (device_id, ts, ts, epoch, seq, end, READ_CHUNK))

    def read_anomalies(self, device_id: str, since: float, until: float) -> list[AnomalyRow]:
        bounds = (device_id, _bound(since), _bound(until))
        values = self._run(lambda conn: conn.execute(_ANOMALIES, bounds).fetchall())
        return [AnomalyRow(d, s, ts.timestamp(), *rest) for d, s, ts, *rest in values]

    # --- retention ------------------------------------------------------------------------

    def partitions(self, table: str = "telemetry") -> list[str]:
        """Names of the table's daily partitions, oldest first."""
        found = self._run(lambda conn: self._partitions(conn, table))
        return [found[day] for day in sorted(found)]

    def apply_retention(self, now: Optional[float] = None) -> RetentionResult:
        now = time.time() if now is None else now
        self._ensure_days(days_ahead(now, PARTITIONS_AHEAD))
        cutoff = self.cutoff(now)
        retention = self.retention_days
        if retention is None:
            return RetentionResult(cutoff, None)

        def work(conn: Connection) -> list[str]:
            dropped = []
            for table in TABLES:
                found = self._partitions(conn, table)
                for day in expired_days(found, now, retention):
                    with conn.transaction():
                        conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT}'")
                        conn.execute(
                            sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(found[day]))
                        )
                    dropped.append(found[day])
            # Heads of devices silent since before the cutoff: a missing head only means
            # the next reading of that (device, epoch) is checked against the table.
            with conn.transaction():
                conn.execute("DELETE FROM telemetry_heads WHERE last_ts < %s", (_bound(cutoff),))
                conn.execute("DELETE FROM dead_letters WHERE at < %s", (cutoff,))
            self._known = None
            return dropped

        dropped: list[str] = self._run(work)
        if dropped:
            log.info("retention: dropped partitions %s", ", ".join(dropped))
        return RetentionResult(cutoff, None, tuple(dropped))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
