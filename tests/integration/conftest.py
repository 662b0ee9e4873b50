"""Integration fixtures: a real Mosquitto on a free loopback port and a persistent subscriber."""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import subprocess
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.polling import wait_until
from support.ports import free_port

MOSQUITTO = os.environ.get("MOSQUITTO", "/usr/sbin/mosquitto")


class Broker:
    """Mosquitto with persistence; stop()/start() keep the port and the persistence dir."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, listener_options: Sequence[str] = ()) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # Sessions and queued/in-flight QoS1 messages are written on SIGTERM (and every
            # second), so a graceful restart loses nothing.
            "persistence true",
            f"persistence_location {workdir}/",
            "autosave_interval 1",
            "max_queued_messages 100000",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            *listener_options,  # e.g. cafile/certfile/keyfile for a TLS listener
        ]
        if os.geteuid() == 0:
            # As root, mosquitto drops to user "mosquitto", which cannot write our tmp dir.
            lines.append(f"user {getpass.getuser()}")
        self.conf.write_text("\n".join(lines) + "\n")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None, "already running"
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if not wait_until(self._accepts, timeout):
            self.stop()
            raise RuntimeError(f"mosquitto did not listen on {self.port}: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        wait_until(lambda: not self._accepts(), 5.0)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Broker]:
    if not (os.path.exists(MOSQUITTO) and os.access(MOSQUITTO, os.X_OK)):
        pytest.skip(f"{MOSQUITTO} not installed (apt-get install mosquitto)")
    broker = Broker(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Make extra brokers, e.g. with TLS listener options; all are stopped at teardown."""
    if not (os.path.exists(MOSQUITTO) and os.access(MOSQUITTO, os.X_OK)):
        pytest.skip(f"{MOSQUITTO} not installed (apt-get install mosquitto)")
    brokers: list[Broker] = []

    def make(name: str = "broker-extra", listener_options: Sequence[str] = ()) -> Broker:
        broker = Broker(tmp_path / name, listener_options)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.stop()


class Collector:
    """Persistent-session (clean_start=False) subscriber recording telemetry seqs per device."""

    def __init__(self, broker: Broker, topic: str = "iot/#") -> None:
        self.topic = topic
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.status: dict[str, str] = {}
        self.lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"it-collector-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("collector could not subscribe")

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        with self.lock:
            if parts[:2] == ["iot", "status"]:
                self.status[parts[-1]] = msg.payload.decode()
            elif parts[:2] == ["iot", "telemetry"]:
                self.seqs[parts[-1]].append(json.loads(msg.payload)["seq"])

    def snapshot(self) -> dict[str, list[int]]:
        with self.lock:
            return {k: list(v) for k, v in self.seqs.items()}

    def count(self, device: str) -> int:
        with self.lock:
            return len(self.seqs.get(device, []))

    def missing(self, device: str, upto: int) -> list[int]:
        """Seqs in 0..upto-1 never received."""
        with self.lock:
            have = set(self.seqs.get(device, []))
        return [s for s in range(upto) if s not in have]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collector(mosquitto: Broker) -> Iterator[Collector]:
    c = Collector(mosquitto)
    yield c
    c.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault tests' measurements: recovery time and the consumer's accounting per fault."""
    from support.watch import RESULTS

    if not RESULTS:
        return
    terminalreporter.section("fault tests: recovery and accounting")
    columns = ("test", "recovery_s", "missing", "duplicates", "overflow", "reconnects", "messages")
    terminalreporter.write_line(f"{columns[0]:<36}" + "".join(f"{c:>12}" for c in columns[1:]))
    for row in RESULTS:
        cells = "".join(f"{row[c]!s:>12}" for c in columns[1:])
        terminalreporter.write_line(f"{row['test']:<36}{cells}")
