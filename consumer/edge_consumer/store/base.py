"""The TelemetryStore interface that the consumer, the dashboard and the export command use.

Identity of a reading: (device_id, epoch, seq). An agent that loses its state directory starts
again at seq 0 under a new random epoch (edge_agent.state); keyed on (device_id, seq) alone,
every reading of the new epoch whose seq the old one had used would be dropped as a
"duplicate": silent loss of exactly the data a reset device sends first. With the epoch in the
key, a redelivery (same device, epoch and seq) is stored once and a reset device's readings are
new rows. An agent from before epochs has epoch None, stored as NO_EPOCH (-1).

A duplicate does not always carry the same device ts: an MQTT redelivery is the same bytes, but
an agent that crashes before the broker's PUBACK resumes from its saved seq and publishes that
reading again with a new publish ts (edge_agent.agent: readings are stamped when produced). Both
stores therefore deduplicate on the key without ts; see PostgresStore for how it does so on a
table partitioned by ts.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Optional, TypeVar

from .model import AnomalyRow, DeadLetter, RetentionResult, TelemetryRow, dead_letter
from .writer import Isolation

DEFAULT_RETENTION_DAYS = 30
S = TypeVar("S", bound="TelemetryStore")
DAY_S = 86_400


class StoreError(Exception):
    """A store that cannot be opened as asked (bad URL, missing driver); worded for people."""


class TelemetryStore(abc.ABC):
    """A durable, idempotent home for readings. Calls from several threads are serialized."""

    retention_days: Optional[int]  # None: keep everything

    @abc.abstractmethod
    def write_batch(self, rows: Sequence[TelemetryRow]) -> None:
        """Store rows in one transaction, all or none; rows already stored are skipped.

        When it returns, the rows are committed (durable as documented by each store), so
        the MQTT messages they came from may be acknowledged. Raises on any database error,
        having stored nothing; the caller retries the same rows (BatchWriter does).
        """

    @abc.abstractmethod
    def write_anomalies(self, rows: Sequence[AnomalyRow]) -> None:
        """Store anomaly findings in one transaction; idempotent on
        (device_id, seq, ts, sensor, kind)."""

    @abc.abstractmethod
    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep rows the database refused, each with its error, in the `dead_letters` table
        of the same store, in one transaction; idempotent on (kind, key). Raises like
        write_batch: then nothing is kept, and the caller must not acknowledge them."""

    @abc.abstractmethod
    def read_dead_letters(self) -> list[DeadLetter]:
        """Every dead letter, oldest first (they are few: each is a refused row)."""

    @abc.abstractmethod
    def ping(self) -> None:
        """A trivial query on the writing connection (reconnecting if it was lost); raises
        when the database does not answer. The writer asks after a failed batch: only a
        reachable database can have refused a row on its own."""

    def transient(self, error: BaseException) -> bool:
        """True for an error that says nothing about the rows: the connection, a lock, the
        disk, the server's resources. The writer holds the batch and retries it; it never
        dead-letters a row for such an error. Stores refine this; by default only the
        operating system's errors are."""
        return isinstance(error, (OSError, MemoryError))

    @abc.abstractmethod
    def recent(self, device_id: str, since_ts: float, limit: int = 1000) -> list[TelemetryRow]:
        """The newest `limit` readings of a device with ts >= since_ts, oldest first."""

    @abc.abstractmethod
    def read_range(self, device_id: str, since: float, until: float) -> Iterator[TelemetryRow]:
        """Every reading of a device with since <= ts < until, by ts (then epoch, seq).

        Fetched in chunks, each its own query: memory stays flat for long ranges, and an
        iterator left half-read holds no lock.
        """

    @abc.abstractmethod
    def read_anomalies(self, device_id: str, since: float, until: float) -> list[AnomalyRow]:
        """Anomaly findings of a device with since <= ts < until, by ts."""

    @abc.abstractmethod
    def apply_retention(self, now: Optional[float] = None) -> RetentionResult:
        """Remove readings and findings older than retention_days before `now` (default:
        the current time). Cheap enough to call hourly; does nothing without retention."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; the store cannot be used afterwards."""

    def isolation(self) -> Isolation[TelemetryRow]:
        """For BatchWriter(store.write_batch, isolation=store.isolation()): a row this store
        refuses on its own is kept in its dead_letters table, and the rest go on."""

        def keep(refused: Sequence[tuple[TelemetryRow, BaseException]]) -> None:
            self.write_dead_letters([dead_letter(row, error) for row, error in refused])

        return Isolation(self.ping, self.transient, keep)

    def cutoff(self, now: Optional[float] = None) -> float:
        """The ts before which readings are due for removal (-inf without retention)."""
        if self.retention_days is None:
            return float("-inf")
        return (time.time() if now is None else now) - self.retention_days * DAY_S

    def __enter__(self: S) -> S:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()
