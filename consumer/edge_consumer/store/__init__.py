"""The telemetry store: readings and anomaly findings in SQLite or PostgreSQL.

    store = open_store("sqlite:////var/lib/edge-consumer/telemetry.db", retention_days=30)
    writer = BatchWriter(store.write_batch, isolation=store.isolation()).start()
    writer.put(telemetry_row(message), ack)     # ack runs once the row is committed
    ...
    writer.close(timeout=10); store.close()

URLs:
- `sqlite:///abs/path.db` (also `sqlite:////abs/path.db`), `sqlite:rel/path.db`; the query
  `?synchronous=full` fsyncs every commit (sqlite.py explains the trade).
- `postgresql://user@host:port/db?sslmode=verify-full` or `postgres://...` or any libpq DSN
  starting with one of those; the rest (password, sslrootcert, PG* environment) is libpq's.
  Needs the `postgresql` extra (psycopg 3).

Only this package's sqlite/postgres modules touch a database; nothing here imports pandas or
psycopg until asked, so the consumer pays for neither when it does not use them.
"""

from __future__ import annotations

import urllib.parse
from typing import Optional

from .base import DEFAULT_RETENTION_DAYS, StoreError, TelemetryStore
from .model import (
    AnomalyRow,
    DeadLetter,
    RetentionResult,
    TelemetryRow,
    anomaly_row,
    dead_letter,
    telemetry_row,
)
from .writer import BatchWriter, Isolation, WriterClosed, WriterStats

__all__ = [
    "DEFAULT_RETENTION_DAYS",
    "AnomalyRow",
    "BatchWriter",
    "DeadLetter",
    "Isolation",
    "RetentionResult",
    "StoreError",
    "TelemetryRow",
    "TelemetryStore",
    "WriterClosed",
    "WriterStats",
    "anomaly_row",
    "dead_letter",
    "open_store",
    "redact",
    "telemetry_row",
]


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable store URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _sqlite_path(url: str) -> tuple[str, dict[str, str]]:
    rest = url[len("sqlite:") :]
    path, _, query = rest.partition("?")
    if path.startswith("//"):
        # sqlite:///abs/path: an empty authority then an absolute path, as in file:///...
        authority, slash, path = path[2:].partition("/")
        if authority:
            raise StoreError(f"{url}: a SQLite URL names no host (sqlite:///path/to/file.db)")
        # sqlite:////abs (SQLAlchemy's spelling) too: POSIX may treat a leading // apart.
        path = slash + path.lstrip("/")
    if not path or path == "/":
        raise StoreError(f"{url}: no file path (sqlite:///path/to/file.db)")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    unknown = set(options) - {"synchronous"}
    if unknown:
        raise StoreError(f"{url}: unknown option {', '.join(sorted(unknown))}")
    return urllib.parse.unquote(path), options


def open_store(
    url: str,
    *,
    retention_days: Optional[int] = DEFAULT_RETENTION_DAYS,
    create: bool = True,
) -> TelemetryStore:
    """Open (and with create=True, make) the store at url; StoreError says what is wrong.

    retention_days None keeps everything. create=False (exports) refuses to make a new store.
    """
    if retention_days is not None and retention_days < 1:
        raise StoreError("retention_days must be at least 1 (or None to keep everything)")
    scheme = url.partition(":")[0].lower()
    if scheme == "sqlite":
        from .sqlite import SqliteStore

        path, options = _sqlite_path(url)
        sync = options.get("synchronous", "normal").lower()
        return SqliteStore(path, retention_days=retention_days, synchronous=sync, create=create)
    if scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresStore
        except ImportError as e:
            raise StoreError(
                f"a PostgreSQL store needs psycopg 3: pip install 'edge-fleet[postgresql]' ({e})"
            ) from None
        return PostgresStore(url, retention_days=retention_days, create=create)
    raise StoreError(
        f"{redact(url)}: unknown store URL (sqlite:///path/file.db or postgresql://...)"
    )
