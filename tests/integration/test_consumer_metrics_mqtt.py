"""The monitor service against a real Mosquitto: /metrics read with prometheus_client's parser,
broker $SYS metrics, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
import pytest
from edge_agent.protocol import telemetry
from monitor_helpers import MonitorService
from support.polling import wait_until

pytestmark = pytest.mark.integration

N = 6


def device(n: int) -> str:
    return f"0a:ed:9e:00:20:{n:02x}"


def publisher(broker: Any) -> mqtt.Client:
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id="it-metrics-publisher",
        protocol=mqtt.MQTTv5,
    )
    client.connect(broker.host, broker.port)
    client.loop_start()
    return client


def send(client: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


def labels(**pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs.items()))


def test_metrics_count_every_device_online_and_the_broker(
    broker_factory: Callable[..., Any], tmp_path: Path
) -> None:
    broker = broker_factory("broker-sys", ["sys_interval 1"])  # $SYS every second
    broker.start()
    info = tmp_path / "devices.json"
    info.write_text(json.dumps({device(n): {"name": f"pi-{n}", "arch": "arm64"} for n in range(N)}))
    service = MonitorService(broker, tmp_path, "--device-info", str(info), "--offline-after", "5")
    pub = publisher(broker)
    try:
        for n in range(N):
            send(pub, f"iot/status/{device(n)}", b"online", retain=True)
            for seq in range(3):
                body = telemetry(device(n), f"pi-{n}", time.time(), seq, {
                    "temp": 20.0 + n, "humidity": 50.0, "co": 0.005, "lpg": 0.0076,
                    "smoke": 0.02, "light": n % 2 == 0, "motion": False,
                })  # fmt: skip
                send(pub, f"iot/telemetry/{device(n)}", body)
        send(pub, f"iot/telemetry/{device(0)}", b"\xff not utf-8")

        def online() -> float:
            return service.metrics()["edge_fleet_devices"].get(labels(state="online"), -1)

        assert wait_until(lambda: online() == N, 10), service.metrics()["edge_fleet_devices"]

        def clients() -> float:
            return service.metrics().get("edge_fleet_broker_clients_connected", {}).get((), -1)

        # The consumer and the publisher, once the broker's next $SYS update is in.
        assert wait_until(lambda: clients() >= 2, 10), clients()
        m = service.metrics()
        assert m["edge_fleet_devices"][labels(state="offline")] == 0
        assert m["edge_fleet_messages_received_total"][()] == 3 * N + 1
        assert m["edge_fleet_messages_valid_total"][()] == 3 * N
        assert m["edge_fleet_messages_invalid_total"][labels(reason="not_utf8")] == 1
        per_device = m["edge_fleet_device_online"]
        assert len(per_device) == N and set(per_device.values()) == {1.0}
        temp = m["edge_fleet_device_reading"][
            labels(device_id=device(5), device_name="pi-5", sensor="temp")
        ]
        assert temp == 25.0
        assert m["edge_fleet_consumer_connected"][()] == 1
        assert m["edge_fleet_broker_up"][()] == 1
        assert m["edge_fleet_broker_messages_received_total"][()] >= 3 * N
        assert m["edge_fleet_message_latency_seconds_count"][()] == 3 * N
        assert m["process_resident_memory_bytes"][()] > 0

        # A device whose will fires is offline at once; a silent one after --offline-after.
        send(pub, f"iot/status/{device(1)}", b"offline", retain=True)
        assert wait_until(lambda: online() == N - 1, 3)
        assert wait_until(lambda: online() == 0, 5 + 3)
    finally:
        pub.disconnect()
        pub.loop_stop()
        code = service.stop(signal.SIGTERM)
    log = service.log.read_text()
    assert code == 0, log
    assert "stopped: SIGTERM" in log and "Traceback" not in log


def test_stops_promptly_on_sigterm_with_a_dashboard_open(mosquitto: Any, tmp_path: Path) -> None:
    import urllib.request

    service = MonitorService(mosquitto, tmp_path)
    stream = urllib.request.urlopen(service.url + "/events", timeout=10)
    try:
        assert stream.readline().startswith(b"retry:")
        started = time.monotonic()
        code = service.stop(signal.SIGTERM)
        assert code == 0, service.log.read_text()
        assert time.monotonic() - started < 5
    finally:
        stream.close()
