"""Prometheus metrics, computed at scrape time from the Accounting snapshot.

A custom collector: nothing is updated per message, and every per-device series is labelled
by device only (never by message), so a scrape costs O(devices) and the series count stays
at one set per device. The metric names are an interface (alert rules, Grafana): keep them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from edge_agent.protocol import DATA_FIELDS
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from .accounting import DeviceStats, Histogram, bucket_upper
from .dropouts import FLEET_SILENCE_CAUSES
from .monitor import Monitor
from .validation import REASONS

NS = "edge_fleet"
DEVICE = ("device_id", "device_name")
# Fixed `le` bounds (s) for the latency histogram; Accounting's fine log buckets map onto them.
LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LE = [*(repr(b) for b in LATENCY_BOUNDS), "+Inf"]
# (BrokerStats key, metric name after edge_fleet_broker_, help)
BROKER_METRICS = (
    ("clients_connected", "clients_connected", "connected clients"),
    ("messages_received", "messages_received_total", "messages received"),
    ("messages_sent", "messages_sent_total", "messages sent"),
    ("load_received_1min", "load_messages_received_1min", "received per minute, 1 min average"),
    ("load_sent_1min", "load_messages_sent_1min", "sent per minute, 1 min average"),
    ("heap_bytes", "heap_bytes", "heap in use (heap/current)"),
)


def _coarse(bucket: int) -> int:
    """Index into _LE of the first bound that holds the whole fine bucket (its upper edge)."""
    upper = bucket_upper(bucket)
    for i, bound in enumerate(LATENCY_BOUNDS):
        if upper <= bound * (1 + 1e-9):
            return i
    return len(LATENCY_BOUNDS)


def latency_family(hist: Histogram) -> HistogramMetricFamily:
    """Cumulative counts per fixed bound. A fine bucket straddling a bound counts above it
    (counts are at most 5 % pessimistic); the sum is estimated from the bucket midpoints."""
    counts = dict(hist.counts)  # one atomic copy: the MQTT thread adds buckets meanwhile
    per_le = [0] * len(_LE)
    total = 0.0
    for bucket, n in counts.items():
        per_le[_coarse(bucket)] += n
        # Geometric middle of the bucket; bucket 0 (<= 0.1 ms) counts as half its edge.
        middle = math.sqrt(bucket_upper(bucket - 1) * bucket_upper(bucket)) if bucket else 0.5e-4
        total += n * middle
    cumulative, buckets = 0, []
    for le, n in zip(_LE, per_le):
        cumulative += n
        buckets.append((le, float(cumulative)))
    return HistogramMetricFamily(
        f"{NS}_message_latency_seconds",
        "Publish-to-receive latency of valid telemetry (agent clock to consumer clock).",
        buckets=buckets,
        sum_value=total,
    )


class FleetCollector(Collector):
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def describe(self) -> list[Metric]:
        return []  # names vary with the data; no describe-time collection wanted

    def collect(self) -> Iterator[Metric]:
        mon = self.monitor
        now = mon.clock()
        devices = list(mon.devices())
        online = [mon.online(dev, now) for dev in devices]
        yield from self._devices(devices, online)
        yield from self._fleet(len(devices), sum(online))
        yield from self._broker()
        yield from self._ingest()

    def _ingest(self) -> Iterator[Metric]:
        ingest = self.monitor.ingest
        if ingest is None:
            return
        if ingest.detector is not None:
            found = CounterMetricFamily(
                f"{NS}_anomalies_total",
                "Anomalies the detectors reported, by device and kind.",
                labels=("device_id", "kind"),
            )
            for (device_id, kind), n in sorted(dict(ingest.anomalies.counts).items()):
                found.add_metric([device_id, kind], n)
            yield found
            yield CounterMetricFamily(
                f"{NS}_anomaly_readings_skipped_total",
                "Readings not judged by the detectors because they were behind (a flood).",
                ingest.detector.skipped,
            )
            silences = CounterMetricFamily(
                f"{NS}_silences_total",
                "Fleet-level silences: many devices silent at once, reported once instead of a"
                " dropout each, by likely cause (consumer_stall, consumer_disconnected, upstream).",
                labels=("cause",),
            )
            for cause in FLEET_SILENCE_CAUSES:  # every cause from 0, so increase() sees the first
                silences.add_metric([cause], ingest.fleet_events.get(cause, 0))
            yield silences
            judge = ingest.judge
            yield GaugeMetricFamily(
                f"{NS}_devices_restarting",
                "Devices that stopped cleanly (a planned restart) and are expected back: held,"
                " not reported as dropouts unless they stay away.",
                len(judge.restarting) if judge is not None else 0,
            )
        stats = ingest.writer_stats()
        if stats is None:
            return
        yield GaugeMetricFamily(
            f"{NS}_store_up",
            "0 while the telemetry store refuses writes (readings wait, unacknowledged).",
            0.0 if stats.in_outage else 1.0,
        )
        yield CounterMetricFamily(
            f"{NS}_store_rows_total", "Readings committed to the telemetry store.", ingest.stored
        )
        yield CounterMetricFamily(
            f"{NS}_store_write_failures_total",
            "Failed write attempts (each is retried).",
            stats.write_failures,
        )
        yield GaugeMetricFamily(
            f"{NS}_store_queue_rows", "Readings waiting for their batch.", stats.queued
        )
        yield CounterMetricFamily(
            f"{NS}_store_rejected_total",
            "Valid readings no store can hold (timestamp outside 1970..2100).",
            ingest.rejected,
        )
        yield CounterMetricFamily(
            f"{NS}_store_dead_letters_total",
            "Rows the telemetry store refused on their own (a constraint, a value it cannot"
            " hold), kept in its dead_letters table with their error and acknowledged.",
            stats.dead_letters,
        )

    def _devices(self, devices: list[DeviceStats], online: list[bool]) -> Iterator[Metric]:
        mon = self.monitor

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(f"{NS}_device_{name}", doc, labels=DEVICE + extra)

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{NS}_device_{name}", doc, labels=DEVICE + extra)

        received = counter("messages_received_total", "Telemetry messages on the device topic.")
        valid = counter("messages_valid_total", "Valid telemetry messages.")
        invalid = counter("messages_invalid_total", "Rejected messages by reason.", ("reason",))
        gaps = counter("gaps_total", "Sequence numbers never received.")
        dups = counter("duplicates_total", "Sequence numbers received more than once.")
        resets = counter("resets_total", "Agent restarts without state (new epoch).")
        overflow = counter("agent_overflow_total", "Readings the agent dropped (its counter).")
        reconnects = counter("agent_reconnects_total", "The agent's broker reconnects.")
        up = gauge("online", "1 when the status is online and the device was heard lately.")
        last_seen = gauge("last_seen_timestamp_seconds", "When telemetry last arrived (Unix).")
        reading = gauge("reading", "The last valid value per sensor (bools 0/1).", ("sensor",))
        for dev, is_online in zip(devices, online):
            labels = [dev.device_id, mon.name(dev)]
            received.add_metric(labels, dev.received)
            valid.add_metric(labels, dev.valid)
            for reason, n in dict(dev.invalid).items():
                invalid.add_metric([*labels, reason], n)
            gaps.add_metric(labels, dev.gaps)
            dups.add_metric(labels, dev.duplicates)
            resets.add_metric(labels, dev.resets)
            if dev.agent_overflow is not None:
                overflow.add_metric(labels, dev.agent_overflow)
            if dev.agent_reconnects is not None:
                reconnects.add_metric(labels, dev.agent_reconnects)
            up.add_metric(labels, 1.0 if is_online else 0.0)
            if dev.received:
                last_seen.add_metric(labels, dev.last_seen)
            data = dev.data
            if data is not None:
                for sensor in DATA_FIELDS:
                    reading.add_metric([*labels, sensor], float(data[sensor]))
        yield from (received, valid, invalid, gaps, dups, resets, overflow, reconnects)
        yield from (up, last_seen, reading)

    def _fleet(self, total: int, up: int) -> Iterator[Metric]:
        mon = self.monitor
        acc = mon.acc
        devices = GaugeMetricFamily(f"{NS}_devices", "Devices by state.", labels=("state",))
        devices.add_metric(["online"], up)
        devices.add_metric(["offline"], total - up)
        yield devices
        yield CounterMetricFamily(
            f"{NS}_messages_received_total", "Telemetry messages received.", acc.received
        )
        yield CounterMetricFamily(f"{NS}_messages_valid_total", "Valid messages.", acc.valid)
        invalid = CounterMetricFamily(
            f"{NS}_messages_invalid_total", "Rejected messages by reason.", labels=("reason",)
        )
        counts = dict(acc.invalid)
        for reason in REASONS:
            invalid.add_metric([reason], counts.get(reason, 0))
        yield invalid
        yield GaugeMetricFamily(
            f"{NS}_messages_per_second",
            "Telemetry messages received per second over the last ~10 s.",
            mon.rates.fleet(),
        )
        yield latency_family(acc.latency)
        yield GaugeMetricFamily(
            f"{NS}_consumer_connected",
            "1 while the consumer is connected to the broker.",
            1.0 if mon.connected() else 0.0,
        )

    def _broker(self) -> Iterator[Metric]:
        mon = self.monitor
        up = mon.broker_up()
        yield GaugeMetricFamily(
            f"{NS}_broker_up",
            "1 when the consumer is connected and a $SYS update arrived within 30 s.",
            1.0 if up else 0.0,
        )
        if not up:  # stale values would look current: leave them out
            return
        values = dict(mon.broker.values)
        for key, name, doc in BROKER_METRICS:
            value = values.get(key)
            if value is None:  # e.g. heap/current: not every Mosquitto build publishes it
                continue
            family = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
            yield family(f"{NS}_broker_{name}", f"Mosquitto $SYS: {doc}", value)


def build_registry(monitor: Monitor) -> CollectorRegistry:
    """The fleet collector plus prometheus_client's process collector (our CPU, RSS, fds)."""
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    registry.register(FleetCollector(monitor))
    return registry
