"""edge-consumer against a real Mosquitto: fleet check, summaries, persistence, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

pytestmark = pytest.mark.integration

A, B, C = "02:42:ac:11:00:0a", "02:42:ac:11:00:0b", "02:42:ac:11:00:0c"


def message(device: str, seq: int) -> bytes:
    return json.dumps(
        {
            "device_id": device,
            "device_name": f"pi-{device[-2:]}",
            "ts": time.time(),
            "seq": seq,
            "data": {
                "temp": 20.0,
                "humidity": 40.0,
                "co": 0.1,
                "lpg": 0.2,
                "smoke": 0.3,
                "light": False,
                "motion": True,
            },
            "stats": {"overflow": 2, "reconnects": 1, "skipped_rows": 0},
        }
    ).encode()


class Publisher:
    def __init__(self, broker: Any) -> None:
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id="test-publisher",
            protocol=mqtt.MQTTv5,
        )
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Consumer:
    """edge-consumer in a subprocess; start() returns once it has subscribed."""

    def __init__(self, broker: Any, tmp: Path, *args: str) -> None:
        self.summary = tmp / f"summary-{time.monotonic_ns()}.json"
        cmd = [sys.executable, "-m", "edge_consumer", "--broker", broker.host]
        cmd += ["--port", str(broker.port), "--summary-json", str(self.summary)]
        cmd += ["--log-level", "INFO", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)
            if "connected to" in line:
                break
        self._drain = threading.Thread(target=self._read_rest, daemon=True)
        self._drain.start()
        time.sleep(0.3)  # SUBACK

    def _read_rest(self) -> None:
        assert self.proc.stderr is not None
        self.err.extend(self.proc.stderr)

    def wait(self, timeout: float = 30) -> tuple[int, str, str]:
        # Not communicate(): it would race the drain thread for stderr.
        assert self.proc.stdout is not None
        killer = threading.Timer(timeout, self.proc.kill)  # a hung consumer fails, not hangs
        killer.start()
        try:
            out = self.proc.stdout.read()
            self.proc.wait(timeout)
        finally:
            killer.cancel()
        self._drain.join(5)
        return self.proc.returncode, out, "".join(self.err)

    def result(self) -> dict[str, Any]:
        return dict(json.loads(self.summary.read_text()))


def test_fleet_check_met_with_accounting(mosquitto: Any, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# expected\n{A}\n{B.upper()}\n")
    consumer = Consumer(
        mosquitto, tmp_path, "--expect-ids", str(ids), "--min-messages", "3", "--timeout", "30",
        "--summary", "--format", "json",
    )  # fmt: skip
    pub = Publisher(mosquitto)
    try:
        pub.send(f"iot/status/{A}", b"online", retain=True)
        pub.send(f"iot/telemetry/{A}", b"not json")
        pub.send(f"iot/telemetry/{A}", message(B, 0))  # id_mismatch
        for seq in (0, 1, 1, 4):  # a duplicate and a gap of two
            pub.send(f"iot/telemetry/{A}", message(A, seq))
        for seq in (0, 1, 2):
            pub.send(f"iot/telemetry/{B}", message(B, seq))
        rc, out, err = consumer.wait()
    finally:
        pub.close()
    assert rc == 0, err
    assert "fleet check met: 2 of 2 devices" in err
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert {r["type"] for r in records} == {"status", "invalid", "telemetry"}
    assert "TOTAL devices=2" in out  # plain-text summary: stdout is not a terminal
    summary = consumer.result()
    devices = {d["device_id"]: d for d in summary["devices"]}
    a = devices[A]
    assert (a["received"], a["valid"], a["invalid"]) == (6, 4, 2)
    assert (a["gaps"], a["duplicates"], a["status"]) == (2, 1, "online")
    assert a["invalid_by_reason"] == {"not_json": 1, "id_mismatch": 1}
    assert (a["agent_overflow"], a["agent_reconnects"]) == (2, 1)
    assert devices[B]["valid"] == 3 and devices[B]["gaps"] == 0
    assert summary["fleet_check"]["met"] is True


def test_fleet_check_names_missing_and_quiet_devices(mosquitto: Any, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{A}\n{B}\n{C}\n")
    consumer = Consumer(
        mosquitto, tmp_path, "--expect-ids", str(ids), "--min-messages", "2", "--timeout", "2",
        "--format", "none", "--summary",
    )  # fmt: skip
    pub = Publisher(mosquitto)
    try:
        pub.send(f"iot/telemetry/{A}", message(A, 0))
        pub.send(f"iot/telemetry/{A}", message(A, 1))
        pub.send(f"iot/telemetry/{B}", message(B, 0))
        rc, out, err = consumer.wait()
    finally:
        pub.close()
    assert rc == 1
    assert "fleet check failed: 1 of 3 expected devices sent >= 2 valid messages" in err
    assert f"missing (never heard): {C}" in err
    assert f"heard too little (< 2 valid): {B} (1 valid, 0 invalid)" in err
    assert "TOTAL devices=2" in out


def test_persistent_session_gets_what_was_sent_while_away(mosquitto: Any, tmp_path: Path) -> None:
    session = ["--persistent", "--client-id", "test-consumer", "--format", "none"]
    rc, _, err = Consumer(mosquitto, tmp_path, *session, "--duration", "0.5").wait()
    assert rc == 0, err
    pub = Publisher(mosquitto)
    try:
        for seq in range(50):
            pub.send(f"iot/telemetry/{A}", message(A, seq))
    finally:
        pub.close()
    consumer = Consumer(
        mosquitto, tmp_path, *session, "--expect", "1", "--min-messages", "50", "--timeout", "20"
    )
    rc, _, err = consumer.wait()
    assert rc == 0, err
    t = consumer.result()["totals"]
    assert (t["valid"], t["gaps"], t["duplicates"]) == (50, 0, 0)


def test_sigterm_stops_cleanly_with_a_summary(mosquitto: Any, tmp_path: Path) -> None:
    consumer = Consumer(mosquitto, tmp_path, "--format", "pretty", "--summary")
    pub = Publisher(mosquitto)
    try:
        pub.send(f"iot/telemetry/{A}", message(A, 7))
        time.sleep(0.3)
    finally:
        pub.close()
    consumer.proc.send_signal(signal.SIGTERM)
    rc, out, err = consumer.wait()
    assert rc == 0, err
    assert f"pi-0a [{A}] seq=7 temp=20.0°C" in out
    assert "TOTAL devices=1 received=1 valid=1" in out


def test_unreachable_broker_fails_the_fleet_check(tmp_path: Path) -> None:
    from conftest import free_port

    cmd = [sys.executable, "-m", "edge_consumer", "--broker", "127.0.0.1"]
    cmd += ["--port", str(free_port()), "--expect", "1", "--timeout", "1.5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "never connected" in proc.stderr and "fleet check failed" in proc.stderr


def test_reconnects_after_a_broker_restart_without_losing_messages(
    mosquitto: Any, tmp_path: Path
) -> None:
    consumer = Consumer(
        mosquitto, tmp_path, "--persistent", "--client-id", "restart-consumer", "--format", "none",
        "--expect", "1", "--min-messages", "20", "--timeout", "60",
    )  # fmt: skip
    pub = Publisher(mosquitto)
    for seq in range(10):
        pub.send(f"iot/telemetry/{A}", message(A, seq))
    pub.close()
    mosquitto.stop()
    mosquitto.start()
    pub = Publisher(mosquitto)
    try:
        for seq in range(10, 20):  # queued in the consumer's session until it is back
            pub.send(f"iot/telemetry/{A}", message(A, seq))
        rc, _, err = consumer.wait(60)
    finally:
        pub.close()
    assert rc == 0, err
    result = consumer.result()
    # At least once: messages delivered but not yet acked when the broker stopped come again.
    assert result["devices"][0]["distinct_seqs"] == 20
    assert (result["totals"]["gaps"], result["totals"]["consumer_connects"]) == (0, 2)
