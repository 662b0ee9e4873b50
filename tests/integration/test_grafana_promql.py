"""Every query of the Grafana dashboard, against a real Prometheus scraping a real consumer.

A real Mosquitto (conftest.py), three real `edge-agent` processes publishing to it, the real
`edge-consumer --http-port` serving /metrics, with its anomaly detectors and a SQLite telemetry
store (--anomalies --store), and the Debian `prometheus` binary with the prometheus role's own
config and rules (prometheus_fixture.py) scraping it every second. One device's slice holds an
impossible reading (a DHT's failed read), so that the anomaly metrics have a series. Once
Prometheus has scraped a few times, every PromQL expression of monitoring/grafana/edge-fleet.json
(panel targets, with the template variables substituted) must return data, and the template
variables' own label_values() queries must list the real devices. Last, the role's rules on this
live data: the impossible readings make EdgeSensorAnomaly fire for their device alone, and a
killed agent makes EdgeDeviceSilent fire, naming its device.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import paho.mqtt.client as mqtt
import pytest
from monitor_helpers import write_slice
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_fixture import CONSUMER_JOB, Prometheus, PrometheusFactory, prometheus_server
from support.polling import wait_until
from support.ports import free_port

if TYPE_CHECKING:  # fixtures come from conftest.py; only their types are needed here
    from conftest import Broker

__all__ = ["prometheus_server"]  # the fixture, imported so that pytest finds it here

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana" / "edge-fleet.json"
DEVICES = {f"0a:ed:9e:00:00:{n:02x}": f"pi-{n:04d}" for n in (1, 2, 3)}
# The device whose slice has a failed read (impossible values) at this row; the agent wraps its
# 40-row slice every 10 s, so the detectors find it again and again.
ANOMALOUS = list(DEVICES)[2]
FAILED_READ_AT = 1
# The consumer's login, as the fleet's monitor service runs it (every route asks for it).
CONSUMER_AUTH = ("dashboard", "grafana-test-password")
RATE_INTERVAL = "1m"  # what $__rate_interval becomes (4 x a 15 s scrape interval)
# Grafana's built-in variables, as a 30-minute dashboard at 1 s scrapes would set them.
BUILTINS = {
    "__rate_interval": RATE_INTERVAL,
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "30m",
    "__range_s": "1800",
    "__range_ms": "1800000",
}
# Every consumer metric the dashboard must show (the brief's list; heap is optional upstream).
REQUIRED_METRICS = {
    "edge_fleet_devices",
    "edge_fleet_messages_per_second",
    "edge_fleet_messages_received_total",
    "edge_fleet_messages_invalid_total",
    "edge_fleet_message_latency_seconds_bucket",
    "edge_fleet_device_gaps_total",
    "edge_fleet_device_duplicates_total",
    "edge_fleet_device_last_seen_timestamp_seconds",
    "edge_fleet_device_reading",
    "edge_fleet_broker_clients_connected",
    "edge_fleet_broker_load_messages_received_1min",
    "edge_fleet_broker_load_messages_sent_1min",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "edge_fleet_anomalies_total",
    "edge_fleet_store_up",
    "edge_fleet_store_rows_total",
    "edge_fleet_store_queue_rows",
}


# --- the dashboard -------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str

    def __str__(self) -> str:
        return f"{self.panel!r} {self.ref}: {self.expr}"


def load_dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries(dashboard: dict[str, Any]) -> list[Query]:
    return [
        Query(panel["title"], target.get("refId", "?"), target["expr"])
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if not target.get("hide")
    ]


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    """name -> the label_values(...) query of each query-type template variable."""
    found = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            found[var["name"]] = query["query"] if isinstance(query, dict) else query
    return found


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's $var, ${var}, ${var:format} and [[var]] forms, longest names first."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in variables:
            raise KeyError(f"unknown variable {name!r} in {expr!r}")
        return variables[name]

    return re.sub(
        r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)",
        value,
        expr,
    )


def label_values_query(query: str) -> tuple[str, str]:
    """label_values(selector, label) -> (selector, label)."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query)
    assert match, f"not a label_values(metric, label) query: {query}"
    return match.group(1).strip(), match.group(2)


def test_dashboard_is_grafana_json_with_the_template_variables() -> None:
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] == "edge-fleet"
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert label_values_query(variable_queries(dashboard)["device"])[1] == "device_id"

    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel
        assert panel["targets"], f"{panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]

    exprs = " ".join(query.expr for query in dashboard_queries(dashboard))
    used = set(re.findall(r"[a-z_][a-z0-9_]*", exprs))
    assert used >= REQUIRED_METRICS, f"not on the dashboard: {sorted(REQUIRED_METRICS - used)}"
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.95," in exprs
    assert '$device"' in exprs, "no panel follows the chosen device"


# --- the fleet, the consumer and Prometheus -------------------------------------------------


def consumer_serves_metrics() -> bool:
    usage = subprocess.run(
        [sys.executable, "-m", "edge_consumer", "--help"], capture_output=True, text=True
    ).stdout
    return "--http-port" in usage


class Processes:
    """Child processes stopped (SIGTERM, then SIGKILL) at teardown, newest first."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, argv: list[str], env_extra: Optional[dict[str, str]] = None
    ) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        for key in list(env):  # only the flags configure them
            if key.startswith(("MQTT_", "EDGE_CONSUMER_", "EDGE_AGENT_")) or key in (
                "DEVICE_ID", "DEVICE_NAME", "DATASET_PATH", "STATE_DIR", "PUBLISH_INTERVAL",
            ):  # fmt: skip
                env.pop(key)
        env.update(env_extra or {})
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def http_get(url: str, auth: Optional[tuple[str, str]] = None) -> str:
    """The body, or "" for any error (refused, 401...)."""
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return str(response.read().decode())
    except OSError:
        return ""


@dataclass
class MonitoredFleet:
    broker: Broker
    metrics_url: str
    prometheus: Prometheus
    agents: dict[str, subprocess.Popen[bytes]]  # by device_id


@pytest.fixture
def monitored_fleet(
    tmp_path: Path,
    broker_factory: Callable[..., Broker],
    prometheus_server: PrometheusFactory,
) -> Iterator[MonitoredFleet]:
    if not consumer_serves_metrics():
        pytest.fail("edge-consumer has no --http-port: the dashboard needs its /metrics")
    # $SYS every second instead of 10: the broker panels have data at once.
    broker = broker_factory("broker", ["sys_interval 1"])
    broker.start()
    procs = Processes(tmp_path)
    try:
        http_port = free_port()
        procs.start(
            "consumer",
            [sys.executable, "-m", "edge_consumer",
             "--broker", broker.host, "--port", str(broker.port),
             "--http-bind", "127.0.0.1", "--http-port", str(http_port),
             "--http-user", CONSUMER_AUTH[0], "--format", "none",
             "--anomalies", "--store", f"sqlite:///{tmp_path / 'telemetry.db'}"],
            {"EDGE_CONSUMER_HTTP_PASSWORD": CONSUMER_AUTH[1]},
        )  # fmt: skip
        agents = {}
        for n, (device_id, name) in enumerate(DEVICES.items(), start=1):
            failed_read_at = FAILED_READ_AT if device_id == ANOMALOUS else None
            dataset = write_slice(tmp_path / f"slice-{n}.csv", failed_read_at=failed_read_at)
            agents[device_id] = procs.start(
                name,
                [sys.executable, "-m", "edge_agent",
                 "--broker", broker.host, "--port", str(broker.port),
                 "--device-id", device_id, "--device-name", name,
                 "--dataset", str(dataset),
                 "--state-dir", str(tmp_path / f"state-{n}"),
                 "--rate", "4", "--log-level", "WARNING"],
            )  # fmt: skip
        metrics_url = f"http://127.0.0.1:{http_port}/metrics"

        def every_device_online() -> bool:
            text = http_get(metrics_url, CONSUMER_AUTH)
            return f'edge_fleet_devices{{state="online"}} {float(len(DEVICES))}' in text

        assert wait_until(every_device_online, 30, 0.5), (
            f"the consumer never saw {len(DEVICES)} devices online:\n"
            f"{http_get(metrics_url, CONSUMER_AUTH)}\n{(tmp_path / 'consumer.log').read_text()}"
        )
        assert http_get(metrics_url) == "", "the consumer served /metrics without its login"
        # One message the consumer must reject, so that the invalid counters are not all 0.
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
        client.connect(broker.host, broker.port)
        client.loop_start()
        client.publish(f"iot/telemetry/{next(iter(DEVICES))}", b"not json", qos=1).wait_for_publish(
            5
        )
        client.disconnect()
        client.loop_stop()

        prometheus = prometheus_server(
            targets=[f"127.0.0.1:{http_port}"],
            consumer_auth=CONSUMER_AUTH,
            # The agents publish 4 times a second: silent after 3 s, firing 2 s later.
            role_vars={
                "prometheus_device_interval_seconds": 1,
                "prometheus_alert_silent_for": "2s",
            },
        )
        # rate() over $__rate_interval needs two samples; the broker's $SYS comes every second.
        prometheus.wait_for_scrapes(5)
        assert wait_until(
            lambda: prometheus.query("edge_fleet_broker_clients_connected") != [], 30, 0.5
        ), "the consumer never exported the broker's $SYS statistics"
        # The anomaly counter exists from the first finding, and increase() needs two samples.
        assert wait_until(
            lambda: prometheus.query("count_over_time(edge_fleet_anomalies_total[1m]) > 1") != [],
            30,
            0.5,
        ), f"no anomaly scraped twice:\n{http_get(metrics_url, CONSUMER_AUTH)}"
        yield MonitoredFleet(broker, metrics_url, prometheus, agents)
    finally:
        procs.stop_all()
        broker.stop()


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    values = [float(series["value"][1]) for series in result]
    return [value for value in values if math.isfinite(value)]


def test_every_dashboard_query_returns_data(monitored_fleet: MonitoredFleet) -> None:
    prom = monitored_fleet.prometheus
    dashboard = load_dashboard()
    device = next(iter(DEVICES))

    # The template variables' own queries list the real job and devices.
    var_queries = variable_queries(dashboard)
    selector, label = label_values_query(var_queries["job"])
    jobs = prom.api(f"label/{label}/values", {"match[]": selector})
    assert jobs == [CONSUMER_JOB], jobs
    variables = {**BUILTINS, "job": CONSUMER_JOB, "device": device, "DS_PROMETHEUS": "prometheus"}
    selector, label = label_values_query(substitute(var_queries["device"], variables))
    assert sorted(prom.api(f"label/{label}/values", {"match[]": selector})) == sorted(DEVICES)

    queries = dashboard_queries(dashboard)
    assert len(queries) >= 20
    empty, failed = [], []
    for query in queries:
        expr = substitute(query.expr, variables)
        assert "$" not in expr and "[[" not in expr, f"unsubstituted variable: {expr}"
        try:
            result = prom.query(expr)
        except RuntimeError as exc:
            failed.append(f"{query}: {exc}")
            continue
        if not finite_values(result):
            empty.append(f"{query} -> {result}")
    assert not failed, "queries Prometheus refused:\n" + "\n".join(failed)
    assert not empty, "queries without data:\n" + "\n".join(empty)

    # Where the truth is known, the numbers too: 3 devices online, the one bad message.
    assert prom.value('edge_fleet_devices{state="online"}') == len(DEVICES)
    assert prom.value('edge_fleet_devices{state="offline"}') == 0
    assert prom.value('sum(edge_fleet_messages_invalid_total{reason="not_json"})') == 1
    online = prom.query("edge_fleet_device_online == 1")
    assert {s["metric"]["device_id"]: s["metric"]["device_name"] for s in online} == DEVICES
    readings = prom.query(f'edge_fleet_device_reading{{device_id="{device}"}}')
    assert {s["metric"]["sensor"] for s in readings} == {
        "temp", "humidity", "co", "lpg", "smoke", "light", "motion",
    }  # fmt: skip
    # 3 agents at 4 msg/s each (the consumer's own ~10 s rate; Prometheus's rate() over
    # $__rate_interval is diluted by the minute before the fleet started, so only above 0).
    rate = prom.value("sum(edge_fleet_messages_per_second)")
    assert rate is not None and 6 <= rate <= 18, rate
    rate = prom.value(f"sum(rate(edge_fleet_messages_valid_total[{RATE_INTERVAL}]))")
    assert rate is not None and rate > 0, rate
    ages = finite_values(prom.query("time() - edge_fleet_device_last_seen_timestamp_seconds"))
    assert len(ages) == len(DEVICES) and max(ages) < 10, ages
    # The store keeps up; the detectors flag the failed reads of the anomalous device.
    assert prom.value("edge_fleet_store_up") == 1
    stored = prom.value("edge_fleet_store_rows_total")
    assert stored is not None and stored > 0, stored
    anomalies = prom.query("edge_fleet_anomalies_total")
    assert (ANOMALOUS, "impossible") in {
        (s["metric"]["device_id"], s["metric"]["kind"]) for s in anomalies
    }, anomalies
    # The role's rules are loaded, and on this fleet only the impossible readings alert: for
    # their device alone, named in the alert.
    rules = prom.api("rules")["groups"]
    assert sorted(r["name"] for g in rules for r in g["rules"]) == [
        "EdgeAgentOverflowIncreasing", "EdgeBrokerUnreachable",
        "EdgeDeviceGapsIncreasing", "EdgeDeviceSilent", "EdgeFleetSilence", "EdgeSensorAnomaly",
        "EdgeTelemetryStoreDeadLetters", "EdgeTelemetryStoreDown", "EdgeTelemetryStoreRejecting",
    ]  # fmt: skip
    alert = prom.wait_for_alert(
        "EdgeSensorAnomaly", timeout=30, device_id=ANOMALOUS, kind="impossible"
    )
    assert alert["labels"]["device_name"] == DEVICES[ANOMALOUS]
    assert alert["labels"]["severity"] == "warning"
    assert (
        f"Device {DEVICES[ANOMALOUS]} ({ANOMALOUS}) has impossible"
        in alert["annotations"]["summary"]
    )
    firing = prom.alerts(state="firing")
    assert {(a["labels"]["alertname"], a["labels"].get("device_id")) for a in firing} == {
        ("EdgeSensorAnomaly", ANOMALOUS)
    }, firing

    # The rules on live data: an agent killed (no clean offline status) makes EdgeDeviceSilent
    # fire for its device alone, named in the alert.
    silent_id = list(DEVICES)[1]
    agent = monitored_fleet.agents[silent_id]
    agent.kill()
    agent.wait()
    alert = prom.wait_for_alert("EdgeDeviceSilent", timeout=60, device_id=silent_id)
    assert alert["labels"]["device_name"] == DEVICES[silent_id]
    assert alert["labels"]["severity"] == "warning"
    assert DEVICES[silent_id] in alert["annotations"]["summary"]
    firing = prom.alerts("EdgeDeviceSilent", "firing")
    assert [a["labels"]["device_id"] for a in firing] == [silent_id]
