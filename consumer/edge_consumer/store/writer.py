"""BatchWriter: commit rows in batches on a thread of its own; acknowledge only what is committed.

The consumer's MQTT thread calls put(row, ack) for every reading; `ack` sends that message's
PUBACK. The writer commits a batch in one store transaction when it holds `batch_rows` rows,
when its oldest row has waited `batch_delay` seconds, or when no row has come for
`batch_idle` seconds, and only then calls the acks of that batch, in put order (MQTT wants
QoS 1 PUBACKs in the order the PUBLISHes came).

Why the idle rule: the broker sends at most its in-flight window of unacknowledged messages
(mosquitto's max_inflight_messages, 100 in this fleet, or the client's MQTT 5 Receive
Maximum). Since nothing is acked before its commit, a batch can never grow past that window;
without the rule each batch would sit out the whole batch_delay, capping the rate at
window / batch_delay (500 msg/s for 100 and 0.2 s). With it, a batch is committed as soon as
the flow pauses. A message
is thus acknowledged only once its row is committed: killing the consumer (or the writer, or
the database) at any moment loses nothing, since the broker redelivers every unacknowledged
message, and the store's idempotent insert absorbs the redeliveries.

On a store error the batch is kept and retried with capped exponential backoff, forever: never
acked, never dropped. One line is logged when an outage starts and one when it ends.

One bad row must not stop the rest (with `isolation`). A row the database will never accept
(a constraint, a value it cannot hold) would fail its batch on every retry, and since acks go
in order, hold back every later acknowledgement until the broker's queue overflows. So when a
batch fails with an error that is not transient (Isolation.transient: not the connection, a
lock, the disk) and the database answers a probe (Isolation.probe), the writer splits the
batch in halves and writes each, down to the single rows that fail alone: those are handed
to Isolation.dead_letter with their errors (the store keeps them in its dead_letters table),
and then every row of the batch is acknowledged, in put order: stored or dead-lettered,
each is kept. Bisection finds k bad rows of n in about 2k*log2(n) small transactions instead
of n. Anything that goes wrong meanwhile (a transient error, a failed probe, the dead letters
not kept) is an outage as above: the whole batch is retried later, its committed rows being
skipped as duplicates then.

Backpressure. The queue holds at most `queue_rows` rows besides the batch being written; put()
blocks while it is full. That stalls the MQTT thread, which stops reading its socket, and
since nothing is acknowledged meanwhile the broker's in-flight window for this client (MQTT 5
Receive Maximum, mosquitto's max_inflight_messages) fills up: the broker stops sending and
keeps the rest queued in the (persistent) session, so memory stays bounded on both sides and
the backlog waits on the broker's disk. Two consequences for the caller:
- the in-flight window bounds the batch size, hence the rate: the consumer should ask for a
  Receive Maximum of at least batch_rows in its CONNECT (and mosquitto then honours it).
- a put() blocked for longer than 1.5 keepalives keeps paho from sending PINGREQs and the
  broker drops the connection; the unacknowledged messages come again after the reconnect.
  An ack callback must therefore be bound to the connection its message came on and do
  nothing after a reconnect: a packet id of the old connection may name another message on
  a new one (without a persistent session) and acking it there would lose that message.

Ack callbacks run on the writer's thread: they must be thread-safe and quick.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Generic, Optional, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
DEAD_LETTERS_LOGGED = 5  # per batch; the metric counts them all
Ack = Callable[[], None]


class WriterClosed(RuntimeError):
    """put() after close() or abandon()."""


@dataclass(frozen=True)
class Isolation(Generic[T]):
    """What the writer needs to tell one bad row from an outage (see the module docstring)."""

    probe: Callable[[], None]  # raises unless the database answers now
    transient: Callable[[BaseException], bool]  # True: about the database, not the row
    dead_letter: Callable[[Sequence[tuple[T, BaseException]]], None]  # keep, or raise


@dataclass(frozen=True)
class WriterStats:
    rows_committed: int
    batches: int
    write_failures: int  # failed attempts (one outage may hold many)
    outages: int
    queued: int  # rows waiting, not counting the batch being written
    in_outage: bool
    last_error: Optional[str]
    dead_letters: int = 0  # rows the database refused alone, kept as dead letters and acked


class BatchWriter(Generic[T]):
    """See the module docstring. Typical use:

    writer = BatchWriter(store.write_batch).start()
    writer.put(telemetry_row(message), lambda: client.ack(mid, qos))   # MQTT thread
    writer.close(timeout=10)                                          # at shutdown
    """

    def __init__(
        self,
        write: Callable[[Sequence[T]], None],
        *,
        batch_rows: int = 1000,
        batch_delay: float = 0.2,
        batch_idle: float = 0.005,
        queue_rows: int = 10_000,
        retry_initial: float = 0.1,
        retry_max: float = 10.0,
        name: str = "telemetry-writer",
        isolation: Optional[Isolation[T]] = None,
    ) -> None:
        if batch_rows < 1 or queue_rows < 1 or min(batch_delay, batch_idle) < 0:
            raise ValueError("batch_rows and queue_rows must be >= 1, delays >= 0")
        if retry_initial <= 0:
            raise ValueError("retry_initial must be positive")
        self._write = write
        self.isolation = isolation
        self.batch_rows = batch_rows
        self.batch_delay = batch_delay
        self.batch_idle = batch_idle
        self.queue_rows = queue_rows
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._items: deque[tuple[T, Ack, float]] = deque()
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)  # the writer waits for rows
        self._not_full = threading.Condition(self._lock)  # put() waits for room
        self._settled = threading.Condition(self._lock)  # flush() waits for acks
        self._closing = False  # no more puts; drain what is queued, then stop
        self._abandoned = threading.Event()  # stop now: no more writes or acks
        self._put = 0  # rows accepted by put()
        self._last_put = 0.0  # monotonic time of the latest put()
        self._done = 0  # rows committed and acked
        self._rows_committed = 0
        self._batches = 0
        self._failures = 0
        self._outages = 0
        self._in_outage = False
        self._last_error: Optional[str] = None
        self._dead_letters = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # --- producer side --------------------------------------------------------------------

    def start(self) -> BatchWriter[T]:
        self._thread.start()
        return self

    def put(self, row: T, ack: Ack, timeout: Optional[float] = None) -> bool:
        """Queue a row; blocks while the queue is full. False if `timeout` passed first.
        Raises WriterClosed after close() or abandon()."""
        with self._lock:
            deadline = None if timeout is None else time.monotonic() + timeout
            while len(self._items) >= self.queue_rows and not self._stopped():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._not_full.wait(remaining)
            if self._stopped():
                raise WriterClosed("the telemetry writer is closed")
            now = time.monotonic()
            self._items.append((row, ack, now))
            self._put += 1
            self._last_put = now
            n = len(self._items)
            if n == 1 or n == self.batch_rows:  # the writer waits for the first or a full batch
                self._not_empty.notify()
        return True

    def _stopped(self) -> bool:
        return self._closing or self._abandoned.is_set()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait until every row put so far is committed and acked; False on timeout."""
        with self._lock:
            target = self._put
            return (
                self._settled.wait_for(
                    lambda: self._done >= target or self._abandoned.is_set(), timeout
                )
                and self._done >= target
            )

    def close(self, timeout: Optional[float] = None) -> bool:
        """Refuse new rows, commit and ack what is queued, stop. True if all was committed
        within `timeout`; otherwise the writer is abandoned and the rest stays unacked (the
        broker redelivers it to the next consumer)."""
        with self._lock:
            self._closing = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            self.abandon()
            return False
        with self._lock:
            return self._done == self._put

    def abandon(self) -> None:
        """Stop at once, as a kill would: no further writes, retries or acks. A write in
        progress runs to its end in the store (commit or rollback) but is not acked."""
        self._abandoned.set()
        with self._lock:
            self._not_empty.notify_all()
            self._not_full.notify_all()
            self._settled.notify_all()

    def stats(self) -> WriterStats:
        with self._lock:
            return WriterStats(
                self._rows_committed,
                self._batches,
                self._failures,
                self._outages,
                len(self._items),
                self._in_outage,
                self._last_error,
                self._dead_letters,
            )

    # --- the writer thread ----------------------------------------------------------------

    def _next_batch(self) -> list[tuple[T, Ack, float]]:
        """Up to batch_rows items, once full, batch_delay after the oldest or batch_idle after
        the latest put; [] to stop."""
        with self._lock:
            while True:
                if self._abandoned.is_set():
                    return []
                if self._items:
                    full = len(self._items) >= self.batch_rows
                    due = min(
                        self._items[0][2] + self.batch_delay, self._last_put + self.batch_idle
                    )
                    wait = due - time.monotonic()
                    if full or wait <= 0 or self._closing:
                        break
                    self._not_empty.wait(wait)
                elif self._closing:
                    return []
                else:
                    self._not_empty.wait()
            n = min(self.batch_rows, len(self._items))
            batch = [self._items.popleft() for _ in range(n)]
            self._not_full.notify_all()
            return batch

    def _commit(self, rows: list[T]) -> bool:
        """Write until it succeeds (some rows perhaps dead-lettered); False if abandoned first."""
        attempt = 0
        started = time.monotonic()
        while not self._abandoned.is_set():
            try:
                self._write(rows)
            except Exception as e:
                error: Exception = e
                try:
                    if self._isolate(rows, e):
                        break
                except Exception as during:  # transient, unreachable, or not kept: an outage
                    error = during
                attempt += 1
                with self._lock:
                    self._failures += 1
                    self._last_error = f"{type(error).__name__}: {error}".strip()
                    first = not self._in_outage
                    if first:
                        self._in_outage = True
                        self._outages += 1
                if first:
                    log.error(
                        "telemetry store unavailable, holding %d rows and retrying (nothing "
                        "is acknowledged meanwhile): %s",
                        len(rows),
                        self._last_error.splitlines()[0],
                    )
                delay = min(self.retry_max, self.retry_initial * 2 ** min(attempt - 1, 30))
                self._abandoned.wait(delay * random.uniform(0.5, 1.0))  # jitter
                continue
            break
        else:
            return False
        with self._lock:
            was_out, self._in_outage = self._in_outage, False
        if was_out:
            log.warning(
                "telemetry store writes succeed again (retried %d times, %.1f s)",
                attempt,
                time.monotonic() - started,
            )
        return True

    def _isolate(self, rows: list[T], error: Exception) -> bool:
        """After `rows` failed with `error`: False if that is an outage (no isolation, a
        transient error). Otherwise write the rows that the database accepts, dead-letter
        those it refuses alone, and return True; raise if that cannot be done now."""
        iso = self.isolation
        if iso is None or iso.transient(error):
            return False
        iso.probe()  # raises when unreachable: an outage after all
        refused: list[tuple[T, BaseException]] = []
        self._bisect(rows, error, refused)
        if self._abandoned.is_set():
            raise WriterClosed("abandoned while isolating a bad row")
        iso.dead_letter(refused)
        with self._lock:
            self._dead_letters += len(refused)
            self._failures += 1  # the batch's own failed attempt
            self._last_error = f"{type(error).__name__}: {error}".strip()
        for row, why in refused[:DEAD_LETTERS_LOGGED]:
            log.error(
                "the telemetry store refused a row on its own; kept as a dead letter and "
                "acknowledged: %s: %s (%r)",
                type(why).__name__,
                str(why).strip().splitlines()[0] if str(why).strip() else "",
                row,
            )
        if len(refused) > DEAD_LETTERS_LOGGED:
            log.error("... and %d more dead letters", len(refused) - DEAD_LETTERS_LOGGED)
        return True

    def _bisect(
        self, rows: list[T], error: Exception, refused: list[tuple[T, BaseException]]
    ) -> None:
        """rows failed together with error: write each half; a single row failing is refused."""
        assert self.isolation is not None
        if len(rows) == 1:
            refused.append((rows[0], error))
            return
        middle = len(rows) // 2
        for half in (rows[:middle], rows[middle:]):
            if self._abandoned.is_set():
                return
            try:
                self._write(half)
            except Exception as e:
                if self.isolation.transient(e):
                    raise
                self._bisect(half, e, refused)

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch or not self._commit([row for row, _, _ in batch]):
                return
            if self._abandoned.is_set():
                return
            failed = 0
            for _, ack, _ in batch:
                try:
                    ack()
                except Exception:
                    failed += 1
            if failed:
                log.error("%d ack callbacks of a committed batch raised", failed)
            with self._lock:
                self._rows_committed += len(batch)
                self._batches += 1
                self._done += len(batch)
                self._settled.notify_all()
