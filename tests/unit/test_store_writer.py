"""BatchWriter: acks only after commit, retries without loss, backpressure, kill mid-batch."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

import pytest
from edge_consumer.store import BatchWriter, TelemetryRow, WriterClosed
from edge_consumer.store.sqlite import SqliteStore
from support.polling import wait_until

T0 = 1_795_910_400.0
DEVICE = "0a:ed:9e:00:00:01"


def row(seq: int, device: str = DEVICE) -> TelemetryRow:
    return TelemetryRow(
        device,
        seq,
        7,
        T0 + seq,
        None,
        "pi-0001",
        None,
        22.0,
        50.0,
        0.005,
        0.007,
        0.02,
        False,
        False,
    )


def stored_seqs(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:  # a connection of its own: sees only committed rows
        return [r[0] for r in conn.execute("SELECT seq FROM telemetry ORDER BY seq")]


class Acks:
    """Ack callbacks that record their order; optionally check a condition when called."""

    def __init__(self, check: Optional[Callable[[int], None]] = None) -> None:
        self.seqs: list[int] = []
        self.errors: list[str] = []
        self._check = check
        self._lock = threading.Lock()

    def ack(self, seq: int) -> Callable[[], None]:
        def done() -> None:
            if self._check is not None:
                try:
                    self._check(seq)
                except AssertionError as e:
                    self.errors.append(str(e))
            with self._lock:
                self.seqs.append(seq)

        return done


def test_every_ack_comes_after_its_row_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    store = SqliteStore(str(path))
    reader = sqlite3.connect(path, check_same_thread=False)

    def committed(seq: int) -> None:
        found = reader.execute("SELECT 1 FROM telemetry WHERE seq = ?", (seq,)).fetchone()
        assert found, f"seq {seq} acked before it was committed"

    acks = Acks(committed)
    writer = BatchWriter(store.write_batch, batch_rows=64, batch_delay=0.01).start()
    for seq in range(1000):
        writer.put(row(seq), acks.ack(seq))
    assert writer.close(timeout=30)
    assert acks.errors == []
    assert acks.seqs == list(range(1000))  # each once, in put order
    assert stored_seqs(path) == list(range(1000))
    stats = writer.stats()
    assert stats.rows_committed == 1000 and stats.batches >= 1000 // 64
    store.close()


def test_a_quiet_batch_is_committed_after_batch_delay(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "t.db"))
    acks = Acks()
    writer = BatchWriter(
        store.write_batch, batch_rows=1000, batch_delay=0.05, batch_idle=0.05
    ).start()
    started = time.monotonic()
    for seq in range(3):
        writer.put(row(seq), acks.ack(seq))
    assert writer.flush(timeout=10)
    assert 0.04 <= time.monotonic() - started < 5
    assert acks.seqs == [0, 1, 2]
    assert writer.stats().batches == 1
    writer.close(timeout=5)
    store.close()


def test_a_window_smaller_than_the_batch_does_not_wait_out_the_delay(tmp_path: Path) -> None:
    """A broker sends at most its in-flight window (100) of unacknowledged messages; the
    writer must commit those when the flow pauses, not wait batch_delay for 1000 rows."""
    store = SqliteStore(str(tmp_path / "t.db"))
    window = threading.Semaphore(100)
    acks: list[int] = []

    def ack(seq: int) -> Callable[[], None]:
        def done() -> None:
            acks.append(seq)
            window.release()

        return done

    writer = BatchWriter(store.write_batch, batch_rows=1000, batch_delay=0.5).start()
    started = time.monotonic()
    for seq in range(2000):
        window.acquire()  # the broker waits for a PUBACK before sending more
        writer.put(row(seq), ack(seq))
    assert writer.flush(timeout=30)
    # 20 windows: at the 0.5 s delay that would be 10 s; the idle rule makes it a fraction.
    assert time.monotonic() - started < 5
    assert acks == list(range(2000))
    assert writer.stats().batches >= 20
    writer.close(timeout=5)
    store.close()


def test_a_full_batch_does_not_wait_for_the_delay(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "t.db"))
    acks = Acks()
    writer = BatchWriter(store.write_batch, batch_rows=10, batch_delay=60, batch_idle=60).start()
    for seq in range(10):
        writer.put(row(seq), acks.ack(seq))
    assert wait_until(lambda: len(acks.seqs) == 10, 10)
    writer.close(timeout=5)
    store.close()


class Flaky:
    """A store's write_batch that fails while `down` is set, counting attempts."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.down = threading.Event()
        self.attempts = 0

    def write(self, rows: Sequence[TelemetryRow]) -> None:
        self.attempts += 1
        if self.down.is_set():
            raise sqlite3.OperationalError("disk I/O error")
        self.store.write_batch(rows)


def test_a_failing_store_is_retried_and_nothing_is_acked_meanwhile(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.db"
    flaky = Flaky(SqliteStore(str(path)))
    acks = Acks()
    writer = BatchWriter(
        flaky.write, batch_rows=20, batch_delay=0.01, retry_initial=0.01, retry_max=0.05
    ).start()
    for seq in range(20):
        writer.put(row(seq), acks.ack(seq))
    assert writer.flush(timeout=10)

    caplog.set_level(logging.INFO, logger="edge_consumer.store.writer")
    flaky.down.set()
    for seq in range(20, 100):
        writer.put(row(seq), acks.ack(seq))
    assert wait_until(lambda: flaky.attempts >= 10, 10)
    assert acks.seqs == list(range(20))  # nothing of the outage acked
    assert writer.stats().in_outage and "disk I/O error" in str(writer.stats().last_error)
    flaky.down.clear()
    assert writer.flush(timeout=10)
    assert acks.seqs == list(range(100))
    assert stored_seqs(path) == list(range(100))

    lines = [r for r in caplog.records if r.name == "edge_consumer.store.writer"]
    assert [r.levelno for r in lines] == [logging.ERROR, logging.WARNING]  # one per outage
    assert "retrying" in lines[0].getMessage() and "disk I/O error" in lines[0].getMessage()
    assert "succeed again" in lines[1].getMessage()
    assert writer.stats().outages == 1 and not writer.stats().in_outage
    writer.close(timeout=5)


def test_put_blocks_when_the_queue_is_full(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "t.db"))
    gate = threading.Event()

    def slow(rows: Sequence[TelemetryRow]) -> None:
        gate.wait()
        store.write_batch(rows)

    acks = Acks()
    writer = BatchWriter(slow, batch_rows=5, batch_delay=0, queue_rows=10).start()
    for seq in range(5):  # the writer takes these and blocks in slow()
        assert writer.put(row(seq), acks.ack(seq))
    assert wait_until(lambda: writer.stats().queued == 0, 10)
    for seq in range(5, 15):
        assert writer.put(row(seq), acks.ack(seq), timeout=1)
    started = time.monotonic()
    assert not writer.put(row(15), acks.ack(15), timeout=0.2)  # full: the caller stalls
    assert time.monotonic() - started >= 0.19

    blocked = threading.Thread(target=writer.put, args=(row(15), acks.ack(15)))
    blocked.start()
    time.sleep(0.1)
    assert blocked.is_alive()  # the MQTT thread would be parked here
    gate.set()
    blocked.join(10)
    assert not blocked.is_alive()
    assert writer.close(timeout=10)
    assert acks.seqs == list(range(16))


def test_close_drains_then_refuses_puts(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "t.db"))
    acks = Acks()
    writer = BatchWriter(store.write_batch, batch_rows=1000, batch_delay=30, batch_idle=30).start()
    for seq in range(7):
        writer.put(row(seq), acks.ack(seq))
    assert writer.close(timeout=10)  # does not wait out the 30 s delay
    assert acks.seqs == list(range(7))
    with pytest.raises(WriterClosed):
        writer.put(row(7), acks.ack(7))


def test_close_gives_up_on_a_dead_store_without_acking(tmp_path: Path) -> None:
    flaky = Flaky(SqliteStore(str(tmp_path / "t.db")))
    flaky.down.set()
    acks = Acks()
    writer = BatchWriter(flaky.write, batch_delay=0, retry_initial=0.01).start()
    writer.put(row(0), acks.ack(0))
    assert not writer.close(timeout=0.3)
    assert acks.seqs == []


def test_a_raising_ack_callback_does_not_stop_the_writer(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "t.db"))
    acks = Acks()

    def broken() -> None:
        raise RuntimeError("connection gone")

    writer = BatchWriter(store.write_batch, batch_rows=2, batch_delay=0).start()
    writer.put(row(0), broken)
    writer.put(row(1), acks.ack(1))
    writer.put(row(2), acks.ack(2))
    assert writer.close(timeout=10)
    assert acks.seqs == [1, 2]


def test_a_writer_abandoned_mid_batch_acks_nothing_and_redelivery_completes(
    tmp_path: Path,
) -> None:
    """The writer's transaction is interrupted half-way through a batch (as a kill would) and
    the writer abandoned: that batch is neither stored nor acked; a new writer given every
    unacked row again (the broker's redelivery) stores each row exactly once."""
    path = tmp_path / "t.db"
    store = SqliteStore(str(path))
    inside = threading.Event()
    release = threading.Event()
    armed = threading.Event()

    def progress() -> int:  # SQLite calls this every few VM steps inside a statement
        if armed.is_set():
            inside.set()
            release.wait()
            return 1  # abort the statement: the transaction rolls back
        return 0

    store.connection.set_progress_handler(progress, 100)
    acks = Acks()
    writer = BatchWriter(store.write_batch, batch_rows=50, batch_delay=0).start()
    for seq in range(50):
        writer.put(row(seq), acks.ack(seq))
    assert writer.flush(timeout=10)
    armed.set()
    for seq in range(50, 200):
        writer.put(row(seq), acks.ack(seq))
    assert inside.wait(10)  # mid-executemany of the batch 50..99
    writer.abandon()
    release.set()
    time.sleep(0.2)
    assert acks.seqs == list(range(50))
    assert stored_seqs(path) == list(range(50))  # nothing of the interrupted batch
    store.connection.set_progress_handler(None, 0)

    store2 = SqliteStore(str(path))
    redelivered = Acks()
    writer2 = BatchWriter(store2.write_batch, batch_rows=64, batch_delay=0).start()
    for seq in range(200):  # acked ones too: redeliveries are harmless
        writer2.put(row(seq), redelivered.ack(seq))
    assert writer2.close(timeout=10)
    assert stored_seqs(path) == list(range(200))
    store.close()
    store2.close()


_CHILD = """
import sys, time
from edge_consumer.store import BatchWriter, TelemetryRow
from edge_consumer.store.sqlite import SqliteStore

path, n = sys.argv[1], int(sys.argv[2])
store = SqliteStore(path)
# Make transactions long (a short sleep every few thousand SQLite VM steps), so that the kill
# most likely lands inside one.
store.connection.set_progress_handler(lambda: time.sleep(0.001) or 0, 200)
out = sys.stdout

def write(rows):
    out.write("T\\n"); out.flush()          # a transaction starts
    store.write_batch(rows)
    out.write("C\\n"); out.flush()          # committed

writer = BatchWriter(write, batch_rows=100, batch_delay=1.0, batch_idle=1.0).start()  # full
for seq in range(n):
    row = TelemetryRow("dev", seq, 7, 1795910400.0 + seq, None, "pi", None,
                       22.0, 50.0, 0.005, 0.007, 0.02, False, False)
    writer.put(row, lambda s=seq: (out.write(f"A {s}\\n"), out.flush()))
time.sleep(60)
"""


def test_sigkill_mid_transaction_loses_no_acked_row(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    total = 5000
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(total)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    acked: list[int] = []
    last = ""
    try:
        for line in child.stdout:
            last = line.strip()
            if last.startswith("A "):
                acked.append(int(last[2:]))
            elif last == "T" and len(acked) >= 1000:
                time.sleep(0.005)  # well inside the transaction
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.kill()
        rest, _ = child.communicate(timeout=10)
    after = rest.splitlines()  # printed before the kill landed
    acked += [int(line[2:]) for line in after if line.startswith("A ")]
    assert child.returncode == -signal.SIGKILL
    assert [last, *after][-1] == "T", "the kill did not land inside a transaction"
    assert len(acked) >= 1000 and acked == sorted(set(acked))

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = set(stored_seqs(path))
    assert set(acked) <= stored, "an acknowledged row was lost"
    # Whole batches only: the one killed mid-way was rolled back when the file was reopened.
    assert len(stored) % 100 == 0 and len(stored) == len(acked)

    # The broker redelivers everything unacked; a new consumer stores it exactly once.
    store = SqliteStore(str(path))
    writer = BatchWriter(store.write_batch).start()
    for seq in range(total):
        if seq not in acked:
            writer.put(row(seq, "dev"), lambda: None)
    assert writer.close(timeout=30)
    with sqlite3.connect(path) as conn:
        n, distinct = conn.execute("SELECT count(*), count(DISTINCT seq) FROM telemetry").fetchone()
    assert n == distinct == total
    store.close()
