"""Export round trip (issue 12): a device's readings, exported from the store, replay as a
device again and come back the same.

A real agent publishes its slice once (--count) through a real Mosquitto to the consumer, which
stores it in SQLite; `edge-telemetry export` writes that device's readings in the dataset's
format; a second real agent replays the export as its slice, and its export is byte-identical
to the first. Both hold exactly the original slice's readings.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Broker
from edge_agent.dataset import Reading, read_slice
from monitor_helpers import start_agent
from support.polling import wait_until

pytestmark = pytest.mark.integration

ROWS = 40  # monitor_helpers.write_slice's default
FIRST, REPLAYED = "02:00:00:00:13:01", "02:00:00:00:13:02"
EXPORT = str(Path(sys.executable).with_name("edge-telemetry"))


def readings(path: Path) -> list[Reading]:
    data = read_slice(str(path))
    try:
        assert data.skipped == 0, f"{path}: {data.skipped} rows the agent cannot read"
        return [data[i] for i in range(len(data))]
    finally:
        data.close()


def stored(db: Path, device_id: str) -> int:
    try:
        with sqlite3.connect(db) as conn:
            sql = "SELECT count(*) FROM telemetry WHERE device_id = ?"
            return int(conn.execute(sql, (device_id,)).fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0


def publish_once(broker: Broker, workdir: Path, device_id: str, name: str, *extra: str) -> None:
    agent = start_agent(
        broker, workdir, device_id, name, "--interval", "0.02", "--count", str(ROWS), *extra
    )
    assert agent.wait(60) == 0, (workdir / f"{name}.log").read_text()[-2000:]


def export(db: Path, device_id: str, out: Path) -> bytes:
    argv = [EXPORT, "export", "--store", f"sqlite://{db}", "--device", device_id, "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def test_an_exported_device_replays_to_the_same_readings(mosquitto: Broker, tmp_path: Path) -> None:
    db = tmp_path / "telemetry.db"
    log = tmp_path / "consumer.log"
    argv = [
        sys.executable, "-m", "edge_consumer",
        "--broker", mosquitto.host, "--port", str(mosquitto.port),
        "--persistent", "--client-id", "it-roundtrip", "--format", "none",
        "--log-level", "INFO", "--store", f"sqlite://{db}",
    ]  # fmt: skip
    with open(log, "ab") as out:
        consumer = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: "connected to" in log.read_text(), 30, 0.1), log.read_text()

        publish_once(mosquitto, tmp_path, FIRST, "rt-first")
        assert wait_until(lambda: stored(db, FIRST) == ROWS, 30, 0.2), log.read_text()[-2000:]
        first = export(db, FIRST, tmp_path / "first.csv")
        assert readings(tmp_path / "first.csv") == readings(tmp_path / "rt-first.csv")

        # The export is the second agent's dataset (the last --dataset wins).
        publish_once(
            mosquitto, tmp_path, REPLAYED, "rt-replay", "--dataset", str(tmp_path / "first.csv")
        )
        assert wait_until(lambda: stored(db, REPLAYED) == ROWS, 30, 0.2), log.read_text()[-2000:]
        assert export(db, REPLAYED, tmp_path / "replayed.csv") == first
    finally:
        consumer.send_signal(signal.SIGTERM)
        assert consumer.wait(30) == 0, log.read_text()[-2000:]
