"""What the monitor service does with a valid reading besides counting it: store it, acking
its MQTT message only once the batch holding it is committed, and run the anomaly detectors.

Runs on paho's network thread (reading, passthrough) and the main thread (tick, close). With
a store, every QoS 1 message goes through the BatchWriter in arrival order, also those that
are not stored (status, $SYS, invalid), so acknowledgements keep the order of their PUBLISHes
(MQTT-4.6.0-2) and a message is never acknowledged ahead of an earlier, uncommitted reading.

Anomalies come from a detector (anomaly.worker: a child process in the service) a pump or two
after their reading; they are published (`iot/anomaly/<device_id>`, QoS 1), counted, kept in a
short in-memory log for the dashboard and stored (idempotently, acknowledging nothing).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Sequence
from typing import Callable, NamedTuple, Optional

from edge_agent.protocol import anomaly_topic

from .anomaly import Anomaly
from .anomaly.worker import DetectorProcess, InlineDetector
from .dropouts import DropoutJudge, FleetEvent
from .store import (
    AnomalyRow,
    BatchWriter,
    DeadLetter,
    Isolation,
    TelemetryRow,
    TelemetryStore,
    WriterClosed,
    WriterStats,
    anomaly_row,
    dead_letter,
    telemetry_row,
)
from .store.model import TS_MAX, TS_MIN
from .validation import Telemetry

log = logging.getLogger("edge_consumer.ingest")

Ack = Callable[[], None]
Publish = Callable[[str, str], object]  # topic, JSON payload
RETENTION_EVERY = 3600.0  # s between retention passes
SILENCE_EVERY = 1.0  # s between checks for silent devices
RECENT_ANOMALIES = 500  # findings the dashboard can list
RECENT_FLEET_EVENTS = 100


class _Item(NamedTuple):
    row: Optional[TelemetryRow]  # None: a message that is only acknowledged
    anomalies: tuple[AnomalyRow, ...]


def _noop() -> None:
    pass


class AnomalyLog:
    """Counts per (device, kind) and the latest findings; written on the MQTT and main
    threads, read at scrape time (plain dict/deque operations, safe under the GIL)."""

    def __init__(self, keep: int = RECENT_ANOMALIES) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.recent: deque[Anomaly] = deque(maxlen=keep)

    def add(self, anomaly: Anomaly) -> None:
        self.counts[anomaly.device_id, anomaly.kind] += 1
        self.recent.append(anomaly)

    def per_device(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for (device_id, _kind), n in list(self.counts.items()):
            totals[device_id] += n
        return dict(totals)


class Ingest:
    def __init__(
        self,
        *,
        store: Optional[TelemetryStore] = None,
        detector: Optional[InlineDetector | DetectorProcess] = None,
        publish: Optional[Publish] = None,
        anomaly_prefix: str = "",
        batch_rows: int = 1000,
        queue_rows: int = 10_000,
    ) -> None:
        self.store = store
        self.detector = detector
        self.publish = publish
        self.anomaly_prefix = anomaly_prefix
        self.anomalies = AnomalyLog()
        # Set by the service once Accounting exists: which dropouts are the devices' own.
        self.judge: Optional[DropoutJudge] = None
        self.fleet_events: Counter[str] = Counter()  # cause -> fleet-level silences
        self.recent_fleet_events: deque[FleetEvent] = deque(maxlen=RECENT_FLEET_EVENTS)
        self.rejected = 0  # valid readings a store cannot hold (timestamp out of range)
        self.stored = 0  # readings committed (those already stored count again)
        self._next_retention = time.monotonic()  # the first pass at start-up
        self._next_silence = time.monotonic() + SILENCE_EVERY
        self.writer: Optional[BatchWriter[_Item]] = None
        if store is not None:
            # A reading (or a finding) the database refuses on its own goes to the store's
            # dead_letters table and is acknowledged; it never holds back the others.
            isolation = Isolation(store.ping, store.transient, self._dead_letter)
            self.writer = BatchWriter(
                self._write, batch_rows=batch_rows, queue_rows=queue_rows, isolation=isolation
            ).start()

    @property
    def defers_acks(self) -> bool:
        """True: QoS 1 messages must be acknowledged through reading()/passthrough()."""
        return self.writer is not None

    # --- paho's network thread ------------------------------------------------------------

    @property
    def detects(self) -> bool:
        return self.detector is not None

    def reading(self, t: Telemetry, ack: Optional[Ack], payload: bytes = b"") -> None:
        """A valid reading, `t` as validation made it from `payload`."""
        if self.detector is not None:
            self.detector.submit(t, payload)
        if self.writer is None:
            return
        row: Optional[TelemetryRow]
        try:
            row = telemetry_row(t)
        except ValueError:
            self.rejected += 1
            row = None
        self._put(_Item(row, ()), ack)

    def passthrough(self, ack: Ack) -> None:
        """A QoS 1 message that is not stored: acknowledged after the ones before it."""
        if self.writer is not None:
            self._put(_Item(None, ()), ack)

    def _put(self, item: _Item, ack: Optional[Ack]) -> None:
        assert self.writer is not None
        # Shutting down: left unacknowledged, the broker sends it again.
        with contextlib.suppress(WriterClosed):
            self.writer.put(item, ack or _noop)

    def _report(self, anomaly: Anomaly) -> None:
        self.anomalies.add(anomaly)
        if self.publish is not None:
            self.publish(anomaly_topic(anomaly.device_id, self.anomaly_prefix), anomaly.to_json())

    # --- the writer's thread --------------------------------------------------------------

    def _write(self, items: Sequence[_Item]) -> None:
        assert self.store is not None
        rows = [item.row for item in items if item.row is not None]
        if rows:
            self.store.write_batch(rows)
        found = [a for item in items for a in item.anomalies]
        if found:  # idempotent too: a retried batch stores each finding once
            self.store.write_anomalies(found)
        self.stored += len(rows)

    def _dead_letter(self, refused: Sequence[tuple[_Item, BaseException]]) -> None:
        assert self.store is not None
        letters: list[DeadLetter] = []
        for item, error in refused:
            if item.row is not None:
                letters.append(dead_letter(item.row, error))
            letters.extend(dead_letter(a, error) for a in item.anomalies)
        self.store.write_dead_letters(letters)

    # --- the main thread ------------------------------------------------------------------

    def tick(self, now: float, connected: bool) -> None:
        """Often (the main loop's 0.1 s): the detector's findings; about once a second the
        silent devices (only while we hear the broker ourselves); retention now and then."""
        if self.detector is not None:
            silence_due = connected and time.monotonic() >= self._next_silence
            if silence_due:
                self._next_silence = time.monotonic() + SILENCE_EVERY
            found = self.detector.pump(now if silence_due else None)
            if self.judge is not None:
                found = self.judge.judge(found, now, connected)
                for event in self.judge.take_events():
                    self.fleet_events[event.cause] += 1
                    self.recent_fleet_events.append(event)
                    log.warning("fleet-level silence (%s): %s", event.cause, event.detail)
            for anomaly in found:
                self._report(anomaly)
            if found and self.writer is not None:
                # A finding on a reading the store rejected (counted there) has that reading's
                # timestamp: it would fail its batch on every retry and hold back every later
                # ack. It is published, not stored.
                rows = tuple(anomaly_row(a) for a in found if TS_MIN <= a.ts < TS_MAX)
                if rows:
                    self._put(_Item(None, rows), None)
        if self.store is not None and time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + RETENTION_EVERY
            try:
                result = self.store.apply_retention()
            except Exception as e:  # the writer reports outages; retention just waits
                log.warning("retention pass failed, retrying in an hour: %s", e)
            else:
                if result.partitions_dropped or result.rows_deleted:
                    log.info(
                        "retention: removed data before %s (%s rows, partitions %s)",
                        time.strftime("%Y-%m-%d", time.gmtime(result.cutoff)),
                        result.rows_deleted,
                        ", ".join(result.partitions_dropped) or "none",
                    )

    def writer_stats(self) -> Optional[WriterStats]:
        return self.writer.stats() if self.writer is not None else None

    def close(self, timeout: float) -> bool:
        """Commit and acknowledge what is queued (within timeout), then close the store."""
        if self.detector is not None:
            self.detector.close()
        done = True
        if self.writer is not None:
            done = self.writer.close(timeout)
            if not done:
                log.warning(
                    "store writer did not drain in %.0f s; the rest is redelivered", timeout
                )
        if self.store is not None:
            self.store.close()
        return done
