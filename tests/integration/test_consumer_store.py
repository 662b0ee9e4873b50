"""The monitor's consumer writing the telemetry store, killed mid-flood (issue 12, zero loss).

20 real agents publish every 50 ms to a real Mosquitto; the consumer runs as the service does
(persistent session, --store, --anomalies) and is SIGKILLed while readings pour in, then
started again; in another test PostgreSQL itself is killed and restarted. Afterwards every
reading the agents published is in the store exactly once: each device's seqs are 0..last
without a hole, and no key appears twice. A subscriber of its own (conftest.Collector) shows
what the broker delivered, so a hole could not hide behind an agent that never sent it.

One bad row never stops the fleet: a valid reading that neither database can hold (seq 2**63)
is kept as a dead letter, and every other reading is stored and acknowledged.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import Broker, Collector
from edge_agent import protocol
from monitor_helpers import start_agent
from postgres_fixture import PostgresCluster, pg_bindir
from support.polling import wait_until
from support.ports import free_port

pytestmark = pytest.mark.integration

DEVICES = 20
INTERVAL = "0.05"  # s: 400 readings/s from the fleet


def mac(i: int) -> str:
    return f"02:00:00:00:12:{i:02x}"


class Consumer:
    """edge-consumer as the monitor service runs it, with a fixed client ID to resume."""

    def __init__(self, broker: Broker, workdir: Path, store: str) -> None:
        self.log = workdir / "consumer.log"
        self.cmd = [
            sys.executable, "-m", "edge_consumer",
            "--broker", broker.host, "--port", str(broker.port),
            "--persistent", "--client-id", "it-store-consumer",
            "--format", "none", "--log-level", "INFO",
            "--store", store, "--anomalies",
        ]  # fmt: skip
        self.proc: Any = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return int(self.proc.wait(30))


class Rows:
    """The store's telemetry keys, read with the database's own driver."""

    def __init__(self, url: str) -> None:
        self.url = url

    def keys(self) -> list[tuple[str, int, int]]:
        sql = "SELECT device_id, epoch, seq FROM telemetry"
        if self.url.startswith("sqlite:"):
            path = self.url.removeprefix("sqlite://")
            with sqlite3.connect(path) as conn:
                return [tuple(r) for r in conn.execute(sql)]  # type: ignore[misc]
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=3) as conn:
                return [tuple(r) for r in conn.execute(sql)]  # type: ignore[misc]
        except psycopg.Error:
            return []

    def count(self) -> int:
        try:
            return len(self.keys())
        except sqlite3.OperationalError:  # not created yet
            return 0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    if pg_bindir() is None:
        pytest.fail("PostgreSQL is not installed: `make setup` installs it")
    with PostgresCluster() as pg:
        yield pg


@pytest.fixture
def agents(mosquitto: Broker, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Filled by start_agents(), once the consumer's session exists (before it, the broker
    keeps nothing for it)."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def start_agents(
    agents: list[subprocess.Popen[bytes]], broker: Broker, consumer: Consumer, tmp_path: Path
) -> None:
    assert wait_until(lambda: "connected to" in consumer.log.read_text(), 30, 0.1)
    agents += [
        start_agent(broker, tmp_path, mac(i), f"store-{i:02d}", "--interval", INTERVAL)
        for i in range(DEVICES)
    ]


def stop_agents(agents: list[subprocess.Popen[bytes]]) -> None:
    for p in agents:
        p.send_signal(signal.SIGTERM)
    for p in agents:
        assert p.wait(30) == 0


def assert_every_reading_stored_once(
    rows: Rows, collector: Collector, consumer: Consumer, tmp_path: Path
) -> None:
    # The collector lags behind the consumer on a loaded machine: wait until it has what the
    # broker sent it (no new message for a second), or the store looks ahead of the broker.
    delivered = collector.snapshot()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(1)
        now = collector.snapshot()
        if now == delivered:
            break
        delivered = now
    assert len(delivered) == DEVICES
    # The consumer catches up with what the broker queued for its session, then goes quiet.
    total = sum(len(set(s)) for s in delivered.values())
    wait_until(lambda: rows.count() >= total, 60, 0.5)
    keys = rows.keys()
    assert len(keys) == len(set(keys)), "a reading was stored twice"
    stored: dict[str, set[int]] = {}
    for device_id, _epoch, seq in keys:
        stored.setdefault(device_id, set()).add(seq)
    log = consumer.log.read_text()
    for device_id, seqs in delivered.items():
        last = max(seqs)
        assert set(seqs) == set(range(last + 1)), f"{device_id}: the broker lost readings"
        missing = sorted(set(range(last + 1)) - stored.get(device_id, set()))
        assert not missing, f"{device_id}: not stored: {missing[:20]}\n{log[-3000:]}"
        assert max(stored[device_id]) == last


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_consumer_killed_mid_flood_stores_every_reading_exactly_once(
    kind: str,
    mosquitto: Broker,
    collector: Collector,
    agents: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/telemetry.db"
    else:
        url = request.getfixturevalue("cluster").create_database("consumer_killed")
    rows = Rows(url)
    consumer = Consumer(mosquitto, tmp_path, url)
    consumer.start()
    start_agents(agents, mosquitto, consumer, tmp_path)
    for _ in range(2):  # two kills, each while readings pour in
        assert wait_until(lambda: rows.count() >= 400, 60, 0.2), consumer.log.read_text()
        consumer.stop(signal.SIGKILL)
        time.sleep(1.5)  # the broker queues for the session meanwhile
        before = rows.count()
        consumer.start()
        assert wait_until(lambda b=before: rows.count() > b + 400, 60, 0.2)
    stop_agents(agents)
    assert_every_reading_stored_once(rows, collector, consumer, tmp_path)
    assert consumer.stop() == 0


def test_postgresql_killed_and_restarted_mid_flood_loses_nothing(
    mosquitto: Broker,
    collector: Collector,
    agents: list[subprocess.Popen[bytes]],
    cluster: PostgresCluster,
    tmp_path: Path,
) -> None:
    url = cluster.create_database("postgres_killed")
    rows = Rows(url)
    consumer = Consumer(mosquitto, tmp_path, url)
    consumer.start()
    start_agents(agents, mosquitto, consumer, tmp_path)
    assert wait_until(lambda: rows.count() >= 400, 60, 0.2), consumer.log.read_text()
    cluster.kill()  # SIGKILL of every server process: no shutdown checkpoint
    time.sleep(3)  # the consumer holds its batch, acknowledges nothing and retries
    cluster.start()
    assert wait_until(lambda: rows.count() >= 1500, 60, 0.5), consumer.log.read_text()
    stop_agents(agents)
    assert_every_reading_stored_once(rows, collector, consumer, tmp_path)
    log = consumer.log.read_text()
    assert "telemetry store unavailable" in log and "succeed again" in log, log[-2000:]
    assert consumer.stop() == 0


# --- one bad row never stops the fleet ----------------------------------------------------------

TOO_BIG = 2**63  # validation takes any seq >= 0; neither database holds it
GOOD, BAD = "02:00:00:00:13:01", "02:00:00:00:13:ff"
READINGS = 300


def payload(device_id: str, seq: int) -> bytes:
    data = {"co": 0.005, "humidity": 51.0, "light": False, "lpg": 0.007, "motion": False,
            "smoke": 0.02, "temp": 22.5}  # fmt: skip
    return protocol.telemetry(device_id, f"pi-{device_id[-2:]}", time.time(), seq, data, epoch=9)


def publish(broker: Broker, messages: list[tuple[str, bytes]]) -> None:
    """QoS 1, each confirmed by the broker (PUBACK) before the next goes."""
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id="it-store-publisher",
        protocol=mqtt.MQTTv5,
    )
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for device_id, body in messages:
            client.publish(protocol.telemetry_topic(device_id), body, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def dead_letters(url: str) -> list[tuple[str, str, str]]:
    sql = "SELECT kind, row_key, error FROM dead_letters ORDER BY id"
    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite://")) as conn:
            return [tuple(r) for r in conn.execute(sql)]  # type: ignore[misc]
    import psycopg

    with psycopg.connect(url, connect_timeout=3) as conn:
        return [tuple(r) for r in conn.execute(sql)]  # type: ignore[misc]


def scrape(port: int, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exported")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_reading_no_store_can_hold_is_dead_lettered_and_every_other_stored_and_acked(
    kind: str, mosquitto: Broker, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        url, fresh = f"sqlite:///{tmp_path}/telemetry.db", f"sqlite:///{tmp_path}/fresh.db"
    else:
        cluster = request.getfixturevalue("cluster")
        url, fresh = cluster.create_database("dead_letters"), cluster.create_database("fresh")
    consumer = Consumer(mosquitto, tmp_path, url)
    port = free_port()
    consumer.cmd += ["--http-port", str(port)]
    consumer.start()
    rows = Rows(url)
    try:
        assert wait_until(lambda: "connected to" in consumer.log.read_text(), 30, 0.1)
        # The bad reading amid the good ones: without dead letters its batch would fail on
        # every retry and no acknowledgement after it would ever go.
        messages = [(GOOD, payload(GOOD, seq)) for seq in range(READINGS)]
        messages.insert(READINGS // 2, (BAD, payload(BAD, TOO_BIG)))
        publish(mosquitto, messages)
        assert wait_until(lambda: rows.count() >= READINGS, 30, 0.2), consumer.log.read_text()
        assert sorted(rows.keys()) == [(GOOD, 9, seq) for seq in range(READINGS)]
        letters = [d for d in dead_letters(url) if d[0] == "telemetry"]
        assert [d[:2] for d in letters] == [("telemetry", json.dumps([BAD, 9, TOO_BIG]))]
        assert "OverflowError" in letters[0][2], letters
        assert wait_until(lambda: scrape(port, "edge_fleet_store_queue_rows") == 0, 10, 0.1)
        assert scrape(port, "edge_fleet_store_dead_letters_total") >= 1
        assert scrape(port, "edge_fleet_store_up") == 1
        assert "kept as a dead letter and acknowledged" in consumer.log.read_text()
        time.sleep(1)  # the acks of the last batch leave the socket
        consumer.stop(signal.SIGKILL)  # no shutdown flush: only acks already sent count
    finally:
        if consumer.proc.poll() is None:
            consumer.stop(signal.SIGKILL)

    # Acknowledged: the same session, resumed into an empty store, gets nothing redelivered.
    again = Consumer(mosquitto, tmp_path, fresh)  # logs to the same file
    connects = again.log.read_text().count("connected to")
    again.start()
    try:
        assert wait_until(lambda: again.log.read_text().count("connected to") > connects, 30, 0.1)
        time.sleep(3)  # the broker resends unacknowledged messages at once on reconnect
        assert Rows(fresh).count() == 0, "a message was never acknowledged"
        assert dead_letters(fresh) == []
    finally:
        assert again.stop() == 0
