"""The consumer's Prometheus collector, online rule, rates, $SYS stats and history rings.

Accounting is fed real agent payloads (edge_agent.protocol.telemetry) and the exposition is
read back with prometheus_client's own text parser.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import pytest
from edge_agent.protocol import DATA_FIELDS, telemetry
from edge_consumer.accounting import Accounting
from edge_consumer.history import RingHistory
from edge_consumer.metrics import LATENCY_BOUNDS, build_registry
from edge_consumer.monitor import BrokerStats, DeviceInfo, Monitor, read_device_info
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

A, B, C = "02:42:ac:11:00:0a", "02:42:ac:11:00:0b", "02:42:ac:11:00:0c"
T0 = 1_800_000_000.0


def reading(seq: int) -> dict[str, Any]:
    return {
        "temp": 20.0 + seq / 10,
        "humidity": 40.0,
        "co": 0.004956,
        "lpg": 0.007651,
        "smoke": 0.020411,
        "light": seq % 2 == 1,
        "motion": False,
    }


def payload(device: str, seq: int, ts: float, **extra: Any) -> bytes:
    stats = extra.pop("stats", {"overflow": 0, "reconnects": 0, "skipped_rows": 0})
    name = extra.pop("name", f"pi-{device[-2:]}")
    return telemetry(device, name, ts, seq, reading(seq), stats=stats, epoch=7, **extra)


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def scrape(mon: Monitor) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> {sorted labels: value}, through the real exposition and parser."""
    text = generate_latest(build_registry(mon)).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(metrics: dict[str, Any], name: str, **labels: str) -> Optional[float]:
    return metrics.get(name, {}).get(tuple(sorted(labels.items())))


def device_value(metrics: dict[str, Any], name: str, device: str, **labels: str) -> Optional[float]:
    return value(metrics, name, device_id=device, device_name=f"pi-{device[-2:]}", **labels)


@pytest.fixture
def fleet() -> tuple[Accounting, Monitor, Clock]:
    """A: online, a duplicate, a gap of two, one invalid. B: said offline. C: no status."""
    clock = Clock()
    acc = Accounting()
    history = RingHistory()
    acc.recorder = history.record
    mon = Monitor(acc, history, clock=clock, connected=lambda: True)
    acc.handle_status(f"iot/status/{A}", b"online", T0 - 10)
    stats = {"overflow": 3, "reconnects": 2, "skipped_rows": 0}
    for seq in (0, 1, 1, 4):
        acc.handle(f"iot/telemetry/{A}", payload(A, seq, T0 - 1.0, stats=stats), T0 - 0.8)
    acc.handle(f"iot/telemetry/{A}", b"not json", T0 - 0.5)
    acc.handle_status(f"iot/status/{B}", b"online", T0 - 10)
    for seq in range(3):
        acc.handle(f"iot/telemetry/{B}", payload(B, seq, T0 - 0.2), T0 - 0.1)
    acc.handle_status(f"iot/status/{B}", b"offline", T0)
    acc.handle(f"iot/telemetry/{C}", payload(C, 0, T0 - 0.003), T0)
    return acc, mon, clock


def test_device_counters_match_accounting(fleet: tuple[Accounting, Monitor, Clock]) -> None:
    _, mon, _ = fleet
    m = scrape(mon)
    assert device_value(m, "edge_fleet_device_messages_received_total", A) == 5
    assert device_value(m, "edge_fleet_device_messages_valid_total", A) == 4
    invalid = "edge_fleet_device_messages_invalid_total"
    assert device_value(m, invalid, A, reason="not_json") == 1
    assert device_value(m, "edge_fleet_device_gaps_total", A) == 2
    assert device_value(m, "edge_fleet_device_duplicates_total", A) == 1
    assert device_value(m, "edge_fleet_device_resets_total", A) == 0
    assert device_value(m, "edge_fleet_device_agent_overflow_total", A) == 3
    assert device_value(m, "edge_fleet_device_agent_reconnects_total", A) == 2
    assert device_value(m, "edge_fleet_device_last_seen_timestamp_seconds", A) == T0 - 0.5
    # The last valid reading, per sensor; bools as 0/1.
    assert device_value(m, "edge_fleet_device_reading", A, sensor="temp") == pytest.approx(20.4)
    assert device_value(m, "edge_fleet_device_reading", A, sensor="light") == 0.0
    assert device_value(m, "edge_fleet_device_reading", B, sensor="light") == 0.0
    assert device_value(m, "edge_fleet_device_reading", B, sensor="temp") == pytest.approx(20.2)
    assert device_value(m, "edge_fleet_device_reading", B, sensor="co") == 0.004956


def test_fleet_totals_and_states(fleet: tuple[Accounting, Monitor, Clock]) -> None:
    _, mon, _ = fleet
    m = scrape(mon)
    assert value(m, "edge_fleet_messages_received_total") == 9
    assert value(m, "edge_fleet_messages_valid_total") == 8
    assert value(m, "edge_fleet_messages_invalid_total", reason="not_json") == 1
    assert value(m, "edge_fleet_messages_invalid_total", reason="oversize") == 0
    assert value(m, "edge_fleet_devices", state="online") == 1  # A; B said offline; C no status
    assert value(m, "edge_fleet_devices", state="offline") == 2
    assert value(m, "edge_fleet_consumer_connected") == 1
    # The consumer's own process, from prometheus_client's process collector.
    assert value(m, "process_cpu_seconds_total") is not None
    assert (value(m, "process_resident_memory_bytes") or 0) > 1_000_000


def test_latency_histogram_maps_fine_buckets_to_fixed_bounds(
    fleet: tuple[Accounting, Monitor, Clock],
) -> None:
    _, mon, _ = fleet
    m = scrape(mon)
    name = "edge_fleet_message_latency_seconds_bucket"
    buckets = {float(dict(k)["le"]): v for k, v in m[name].items()}
    assert sorted(buckets) == [*LATENCY_BOUNDS, math.inf]
    counts = [buckets[b] for b in sorted(buckets)]
    assert counts == sorted(counts), "cumulative"
    # A: 4 at 200 ms, B: 3 at 100 ms, C: 1 at 3 ms. A fine bucket straddling a bound counts
    # above it, so 100 ms lands in le=0.25, never below le=0.1's true count.
    assert buckets[0.001] == 0 and buckets[0.005] == 1
    assert buckets[0.05] == 1 and buckets[0.25] == 8 and buckets[math.inf] == 8
    assert value(m, "edge_fleet_message_latency_seconds_count") == 8
    total = value(m, "edge_fleet_message_latency_seconds_sum") or 0
    assert total == pytest.approx(4 * 0.2 + 3 * 0.1 + 0.003, rel=0.05)


def test_online_rule(fleet: tuple[Accounting, Monitor, Clock]) -> None:
    acc, mon, clock = fleet
    online = "edge_fleet_device_online"
    m = scrape(mon)
    assert device_value(m, online, A) == 1
    assert device_value(m, online, B) == 0  # said offline: offline at once
    assert device_value(m, online, C) == 0  # never said online
    clock.now = T0 - 0.5 + mon.offline_after  # exactly offline_after of silence: still online
    assert device_value(scrape(mon), online, A) == 1
    clock.now += 0.01
    assert device_value(scrape(mon), online, A) == 0  # silent too long
    acc.handle(f"iot/telemetry/{A}", payload(A, 5, clock.now), clock.now)
    assert device_value(scrape(mon), online, A) == 1  # heard again
    clock.now = T0 + mon.offline_after + 1
    acc.handle_status(f"iot/status/{C}", b"online", clock.now)
    assert device_value(scrape(mon), online, C) == 0  # online, but its telemetry is too old
    acc.handle(f"iot/telemetry/{C}", payload(C, 1, clock.now), clock.now)
    assert device_value(scrape(mon), online, C) == 1


def test_cardinality_is_one_series_set_per_device() -> None:
    acc = Accounting()
    mon = Monitor(acc, RingHistory(), clock=lambda: T0)
    devices = [f"02:42:ac:11:01:{n:02x}" for n in range(50)]

    def series() -> dict[str, int]:
        return {name: len(rows) for name, rows in scrape(mon).items() if "_device_" in name}

    for seq in range(3):
        for dev in devices:
            acc.handle(f"iot/telemetry/{dev}", payload(dev, seq, T0), T0)
    first = series()
    for seq in range(3, 40):  # ten times the messages: not one more series
        for dev in devices:
            acc.handle(f"iot/telemetry/{dev}", payload(dev, seq, T0 + seq), T0 + seq)
    assert series() == first
    assert first["edge_fleet_device_messages_received_total"] == 50
    assert first["edge_fleet_device_online"] == 50
    assert first["edge_fleet_device_reading"] == 50 * len(DATA_FIELDS)
    assert "edge_fleet_device_messages_invalid_total" not in first  # no invalid: no series
    acc.handle(f"iot/telemetry/{devices[0]}", b"{}", T0)
    acc.handle(f"iot/telemetry/{devices[0]}", b"{}", T0)
    assert series()["edge_fleet_device_messages_invalid_total"] == 1  # per device and reason


def test_device_info_names_and_lists_devices_never_heard(tmp_path: Any) -> None:
    path = tmp_path / "devices.json"
    path.write_text(
        f'{{"{A}": {{"name": "pi-0a", "arch": "arm64", "host": "pi-host-1"}},'
        f' "{C.upper()}": {{"name": "pi-0c", "arch": "amd64"}}}}'
    )
    info = read_device_info(str(path))
    assert info[C] == DeviceInfo("pi-0c", "amd64", None)
    acc = Accounting()
    mon = Monitor(acc, RingHistory(), device_info=info, clock=lambda: T0)
    acc.handle(f"iot/telemetry/{A}", payload(A, 0, T0), T0)
    m = scrape(mon)
    assert device_value(m, "edge_fleet_device_online", C) == 0  # known, never heard: offline
    assert device_value(m, "edge_fleet_device_messages_received_total", C) == 0
    assert value(m, "edge_fleet_devices", state="offline") == 2
    assert device_value(m, "edge_fleet_device_online", A) == 0  # no status yet
    names = {dict(k)["device_name"] for k in m["edge_fleet_device_online"]}
    assert names == {"pi-0a", "pi-0c"}  # C's name comes from the file
    for bad in ("[]", '{"x": 1}', '{"x": {"arch": 64}}', "{"):
        path.write_text(bad)
        with pytest.raises(ValueError):
            read_device_info(str(path))


def test_broker_metrics_from_sys_topics() -> None:
    mono = Clock(100.0)
    connected = [True]
    broker = BrokerStats(clock=mono)
    mon = Monitor(Accounting(), RingHistory(), broker=broker, connected=lambda: connected[0])
    assert value(scrape(mon), "edge_fleet_broker_up") == 0  # no $SYS yet
    for topic, raw in (
        ("$SYS/broker/clients/connected", b"12"),
        ("$SYS/broker/messages/received", b"3400"),
        ("$SYS/broker/messages/sent", b"6800"),
        ("$SYS/broker/load/messages/received/1min", b"120.5"),
        ("$SYS/broker/load/messages/sent/1min", b"240.25"),
        ("$SYS/broker/uptime", b"77 seconds"),
        ("$SYS/broker/clients/connected", b"garbage"),  # not a number: the last one stays
    ):
        broker.on_sys(topic, raw)
    m = scrape(mon)
    assert value(m, "edge_fleet_broker_up") == 1
    assert value(m, "edge_fleet_broker_clients_connected") == 12
    assert value(m, "edge_fleet_broker_messages_received_total") == 3400
    assert value(m, "edge_fleet_broker_messages_sent_total") == 6800
    assert value(m, "edge_fleet_broker_load_messages_received_1min") == 120.5
    assert value(m, "edge_fleet_broker_load_messages_sent_1min") == 240.25
    assert "edge_fleet_broker_heap_bytes" not in m  # this broker does not publish it
    broker.on_sys("$SYS/broker/heap/current", b"57952")
    assert value(scrape(mon), "edge_fleet_broker_heap_bytes") == 57952
    connected[0] = False
    m = scrape(mon)
    assert value(m, "edge_fleet_broker_up") == 0 and value(m, "edge_fleet_consumer_connected") == 0
    assert "edge_fleet_broker_clients_connected" not in m  # stale values are left out
    connected[0] = True
    mono.now += 30.5  # no $SYS for longer than 30 s
    assert value(scrape(mon), "edge_fleet_broker_up") == 0


def test_messages_per_second_over_the_last_seconds() -> None:
    acc = Accounting()
    mon = Monitor(acc, RingHistory(), clock=lambda: T0)
    assert value(scrape(mon), "edge_fleet_messages_per_second") == 0
    seq = 0
    for second in range(15):
        for _ in range(40 if second < 5 else 20):  # 40 msg/s, then 20 msg/s for 10 s
            acc.handle(f"iot/telemetry/{A}", payload(A, seq, T0), T0)
            seq += 1
        mon.rates.sample(acc, 1000.0 + second)
    assert value(scrape(mon), "edge_fleet_messages_per_second") == pytest.approx(20.0)
    # Per device over the minute since the first 10-s sample (taken at 1000 s, 40 valid).
    assert mon.rates.devices(acc, 1014.0) == {A: pytest.approx((seq - 40) / 14.0)}
    assert Monitor(acc, RingHistory()).rates.devices(acc, 1014.0) == {}  # no sample yet


def test_history_ring_is_bounded_and_sampled_at_most_once_a_second() -> None:
    acc = Accounting()
    history = RingHistory(capacity=5)
    acc.recorder = history.record
    for i in range(40):  # 4 messages a second for 10 s
        now = T0 + i / 4
        acc.handle(f"iot/telemetry/{A}", payload(A, i, now), now)
    series = history.recent(A, 0.0)
    assert series is not None
    assert series["ts"] == [T0 + s for s in (5, 6, 7, 8, 9)]  # the last 5 one-second samples
    assert series["temp"] == [pytest.approx(20.0 + s * 4 / 10) for s in (5, 6, 7, 8, 9)]
    assert set(series) == {"ts", *DATA_FIELDS}
    assert all(v in (0.0, 1.0) for v in series["light"])
    recent = history.recent(A, T0 + 7.5)
    assert recent is not None and recent["ts"] == [T0 + 8, T0 + 9]
    assert history.recent(B, 0.0) is None
    ring_bytes = len(history._rings[A].rows) * 8
    assert ring_bytes == 5 * (1 + len(DATA_FIELDS)) * 8  # fixed: array('d'), capacity rows
