"""Ingest: acknowledgements only after commit and in arrival order, anomalies stored too."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from edge_consumer.anomaly import AnomalyEngine
from edge_consumer.anomaly.worker import DetectorProcess, InlineDetector
from edge_consumer.ingest import Ingest
from edge_consumer.store import open_store
from edge_consumer.validation import Telemetry, Validator
from support.polling import wait_until

DEVICE = "02:00:00:00:00:01"
VALIDATOR = Validator()


def reading(
    seq: int, temp: float = 21.0, humidity: float = 40.0, ts: float = 1_700_000_000.0
) -> Telemetry:
    message = {
        "device_id": DEVICE,
        "device_name": "pi-0001",
        "seq": seq,
        "epoch": 1,
        "ts": ts + seq,
        "data": {"temp": temp, "humidity": humidity + seq % 3, "co": 0.004, "lpg": 0.007,
                 "smoke": 0.02, "light": False, "motion": False},
    }  # fmt: skip
    result = VALIDATOR.validate(f"iot/telemetry/{DEVICE}", json.dumps(message).encode())
    assert isinstance(result, Telemetry), result
    return result


class FlakyStore:
    """Wraps a real store; fails its first `failures` batches."""

    def __init__(self, store: Any, failures: int) -> None:
        self.store = store
        self.failures = failures
        self.retention_days = None

    def write_batch(self, rows: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("database restarting")
        self.store.write_batch(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_acks_follow_commit_and_keep_arrival_order(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    flaky = FlakyStore(store, failures=2)
    ingest = Ingest(store=flaky, batch_rows=50)  # type: ignore[arg-type]
    assert ingest.writer is not None
    ingest.writer.retry_initial = 0.01
    acked: list[str] = []
    lock = threading.Lock()

    def ack(name: str) -> Any:
        def done() -> None:
            with lock:
                acked.append(name)

        return done

    for seq in range(100):
        ingest.reading(reading(seq), ack(f"r{seq}"))
        if seq % 10 == 0:
            ingest.passthrough(ack(f"status{seq}"))  # e.g. a status message: not stored
    assert ingest.writer.flush(10)
    expected = []
    for seq in range(100):
        expected.append(f"r{seq}")
        if seq % 10 == 0:
            expected.append(f"status{seq}")
    assert acked == expected
    assert ingest.stored == 100 and flaky.failures == 0
    assert len(store.recent(DEVICE, 0, 1000)) == 100
    assert ingest.close(5)


def test_nothing_is_acknowledged_while_the_store_fails(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    flaky = FlakyStore(store, failures=10**9)
    ingest = Ingest(store=flaky)  # type: ignore[arg-type]
    acked: list[int] = []
    ingest.reading(reading(0), lambda: acked.append(0))
    assert ingest.writer is not None and not ingest.writer.flush(0.5)
    assert acked == [] and ingest.writer_stats().in_outage  # type: ignore[union-attr]
    assert not ingest.close(0.2)  # abandoned: the broker redelivers to the next consumer
    assert acked == []


def test_anomalies_are_published_counted_and_stored(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    published: list[tuple[str, dict[str, Any]]] = []
    ingest = Ingest(
        store=store,
        detector=InlineDetector(AnomalyEngine()),
        publish=lambda topic, payload: published.append((topic, json.loads(payload))),
        anomaly_prefix="iot/anomaly",
    )
    for seq in range(60):
        failed_read = seq == 40  # the dataset's glitch: temp 0.0 with humidity near 1
        temp, humidity = (0.0, 1.0) if failed_read else (21.0 + 0.1 * (seq % 4), 40.0)
        ingest.reading(reading(seq, temp, humidity), None)
    ingest.tick(1_700_000_100.0, connected=False)  # the main loop's pump
    assert ingest.writer is not None and ingest.writer.flush(10)
    impossible = [p for t, p in published if p["kind"] == "impossible"]
    assert [t for t, _ in published] == [f"iot/anomaly/{DEVICE}"] * len(published)
    assert impossible and impossible[0]["seq"] == 40 and "temp" in impossible[0]["sensor"]
    assert ingest.anomalies.counts[DEVICE, "impossible"] == 1
    rows = store.read_anomalies(DEVICE, 0, 2e9)
    assert any(r.kind == "impossible" and r.seq == 40 for r in rows)
    ingest.close(5)


def test_a_finding_on_a_reading_the_store_rejects_does_not_hold_back_acks(tmp_path: Path) -> None:
    """A device whose clock is past 2100 sends an impossible reading: the reading is rejected
    (counted) and its finding published, but neither may stall the acks behind them."""
    store = open_store(f"sqlite:///{tmp_path}/t.db")
    published: list[str] = []
    ingest = Ingest(
        store=store,
        detector=InlineDetector(AnomalyEngine()),
        publish=lambda topic, payload: published.append(payload),
        anomaly_prefix="iot/anomaly",
    )
    assert ingest.writer is not None
    ingest.writer.retry_initial = 0.01
    acked: list[int] = []
    ingest.reading(reading(0, 0.0, 1.0, ts=5e9), lambda: acked.append(0))
    ingest.tick(1_700_000_100.0, connected=False)  # the finding, with the reading's ts
    ingest.reading(reading(1), lambda: acked.append(1))
    assert published and json.loads(published[0])["kind"] == "impossible"
    assert ingest.writer.flush(10), ingest.writer.stats()
    assert acked == [0, 1] and ingest.rejected == 1
    assert not ingest.writer.stats().write_failures
    assert [r.seq for r in store.read_range(DEVICE, 0, 2e9)] == [1]
    ingest.close(5)


def test_without_a_store_acks_are_not_deferred() -> None:
    ingest = Ingest(detector=InlineDetector(AnomalyEngine()))
    assert not ingest.defers_acks and ingest.writer_stats() is None
    ingest.reading(reading(0), None)
    ingest.passthrough(lambda: None)  # nothing queued, nothing raised
    assert ingest.close(1)


def test_the_detector_process_finds_what_the_engine_finds() -> None:
    """The service's detector: the same findings as the engine inline, from a forked child."""
    inline = InlineDetector(AnomalyEngine())
    child = DetectorProcess()
    try:
        for seq in range(60):
            t = reading(seq, *((0.0, 1.0) if seq in (30, 45) else (21.0 + 0.1 * (seq % 4), 40.0)))
            for detector in (inline, child):
                detector.submit(t, json.dumps(t.message).encode())
        expected = inline.pump(None)
        assert [a.seq for a in expected if a.kind == "impossible"] == [30, 45]
        found: list[Any] = []
        child.pump(None)  # sends the batch
        assert wait_until(lambda: bool(found.extend(child.pump(None)) or found), 10)
        assert found == expected
    finally:
        child.close()
    assert not child._proc.is_alive()


def test_the_detector_process_skips_what_it_cannot_hold() -> None:
    child = DetectorProcess(max_pending=10)
    try:
        t = reading(0)
        for _ in range(25):
            child.submit(t, b"{}")
        assert child.skipped == 15  # counted, and memory stays bounded
    finally:
        child.close()


def test_the_detector_process_exits_when_its_parent_is_killed() -> None:
    """After a SIGKILL of the service, systemd's restart must not wait for an orphan."""
    code = (
        "import time; from edge_consumer.anomaly.worker import DetectorProcess; "
        "d = DetectorProcess(); print(d._proc.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert running(child)
    parent.kill()
    parent.wait()
    assert wait_until(lambda: not running(child), 10), "the detector outlived its parent"


def running(pid: int) -> bool:
    """Alive and not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")
