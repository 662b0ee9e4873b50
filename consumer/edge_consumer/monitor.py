"""The monitor service's view of the fleet: online rule, rates, broker $SYS, dashboard snapshot.

Shared by the Prometheus collector and the web app. Nothing here runs per message except
`BrokerStats.on_sys` (only for $SYS topics); everything else is computed when read, from
Accounting's counters, so ingestion pays nothing for the monitor.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

from edge_agent.protocol import BROKER_STATS_TOPIC, DATA_FIELDS, STATUS_ONLINE

from .accounting import Accounting, DeviceStats
from .history import History
from .ingest import Ingest

OFFLINE_AFTER = 15.0  # s: 3 x the agent's default 5 s interval
RATE_WINDOW = 10.0  # s: the fleet's msg/s is measured over about this long
DEVICE_RATE_WINDOW = 60.0  # s: and each device's over this long,
DEVICE_RATE_STEP = 10.0  # from samples taken this often
BROKER_STALE = 30.0  # s: Mosquitto publishes $SYS every sys_interval (default 10 s)
SYS_PREFIX = "$SYS/"
SYS_TOPIC = BROKER_STATS_TOPIC
# The $SYS topics kept, by short name; any other $SYS topic is dropped on arrival.
SYS_KEYS = {
    "$SYS/broker/clients/connected": "clients_connected",
    "$SYS/broker/messages/received": "messages_received",
    "$SYS/broker/messages/sent": "messages_sent",
    "$SYS/broker/load/messages/received/1min": "load_received_1min",
    "$SYS/broker/load/messages/sent/1min": "load_sent_1min",
    "$SYS/broker/heap/current": "heap_bytes",
}


class DeviceInfo(NamedTuple):
    name: Optional[str] = None
    arch: Optional[str] = None
    host: Optional[str] = None


def read_device_info(path: str) -> dict[str, DeviceInfo]:
    """`{device_id: {name, arch, host}}` (every key optional); raises ValueError when bad."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"cannot read {path!r}: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path!r} must hold a JSON object of device_id -> {{name, arch, host}}")
    info: dict[str, DeviceInfo] = {}
    for device_id, entry in raw.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {device_id!r} must map to an object")
        fields = [entry.get(key) for key in DeviceInfo._fields]
        if any(value is not None and not isinstance(value, str) for value in fields):
            raise ValueError(f"{path}: {device_id!r}: name, arch and host must be strings")
        info[device_id.lower()] = DeviceInfo(*fields)
    return info


class BrokerStats:
    """The latest Mosquitto $SYS values; written on the MQTT thread, read at scrape time."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.values: dict[str, float] = {}
        self.updated: Optional[float] = None  # clock() of the last $SYS message
        self._clock = clock

    def on_sys(self, topic: str, payload: bytes) -> None:
        self.updated = self._clock()
        key = SYS_KEYS.get(topic)
        if key is None:
            return
        with contextlib.suppress(ValueError):  # not a number: keep the previous value
            self.values[key] = float(payload)

    def fresh(self) -> bool:
        return self.updated is not None and self._clock() - self.updated <= BROKER_STALE


class Rates:
    """Messages per second from counter samples: the fleet's over ~RATE_WINDOW (sampled every
    second), each device's over ~DEVICE_RATE_WINDOW (sampled every 10 s: at the agent's 5 s
    interval a 10 s window would only ever show 0, 0.1 or 0.2)."""

    def __init__(self) -> None:
        self._fleet: deque[tuple[float, int]] = deque(maxlen=int(RATE_WINDOW) + 1)
        self._devices: deque[tuple[float, dict[str, int]]] = deque(
            maxlen=int(DEVICE_RATE_WINDOW / DEVICE_RATE_STEP) + 1
        )

    def sample(self, acc: Accounting, now: float) -> None:
        """`now` is monotonic; called about once a second."""
        self._fleet.append((now, acc.received))
        if not self._devices or now - self._devices[-1][0] >= DEVICE_RATE_STEP - 0.5:
            self._devices.append((now, {d.device_id: d.valid for d in list(acc.devices.values())}))

    def fleet(self) -> float:
        if len(self._fleet) < 2:
            return 0.0
        (t0, old), (t1, new) = self._fleet[0], self._fleet[-1]
        return (new - old) / (t1 - t0) if t1 > t0 else 0.0

    def devices(self, acc: Accounting, now: float) -> dict[str, float]:
        """Valid msg/s per device, from the oldest sample to `now` (monotonic)."""
        if not self._devices:
            return {}
        t0, old = self._devices[0]
        if now - t0 < 1.0:
            return {}
        span = now - t0
        return {d.device_id: (d.valid - old.get(d.device_id, 0)) / span for d in acc.snapshot()}


# The dashboard's device row, in this order (sent once per snapshot as "columns").
ROW_COLUMNS = (
    "id", "name", "arch", "host", "online", "status", "last_seen", "rate", "received", "valid",
    "invalid", "gaps", "duplicates", "resets", "overflow", "reconnects", "anomalies",
    *DATA_FIELDS,
)  # fmt: skip
RECENT_ANOMALIES = 20  # the newest findings each snapshot carries for the Anomalies panel


class Monitor:
    """Everything the collector and the web app read, with the online rule in one place."""

    def __init__(
        self,
        acc: Accounting,
        history: History,
        *,
        offline_after: float = OFFLINE_AFTER,
        device_info: Optional[Mapping[str, DeviceInfo]] = None,
        connected: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
        broker: Optional[BrokerStats] = None,
        ingest: Optional[Ingest] = None,
    ) -> None:
        self.acc = acc
        self.ingest = ingest  # the store's writer and the anomaly log, when configured
        self.history = history
        self.offline_after = offline_after
        self.info: Mapping[str, DeviceInfo] = device_info or {}
        self.connected = connected
        self.clock = clock
        self.broker = broker or BrokerStats()
        self.rates = Rates()

    def tick(self) -> None:
        """Once a second (the web app's timer): take the rate sample."""
        self.rates.sample(self.acc, time.monotonic())

    def online(self, dev: DeviceStats, now: float) -> bool:
        """Online: the retained status says online AND the device was heard recently.

        A device whose status is offline (its will, or a clean stop) is offline at once; one
        that went silent (power cut, network) after `offline_after` seconds.
        """
        return dev.status == STATUS_ONLINE and now - dev.last_seen <= self.offline_after

    def name(self, dev: DeviceStats) -> str:
        info = self.info.get(dev.device_id)
        return dev.name or (info.name if info else None) or ""

    def display_name(self, device_id: str) -> str:
        """A device's name by its ID (the one it announces, else the device-info file's)."""
        dev = self.acc.devices.get(device_id)
        if dev is not None:
            return self.name(dev)
        info = self.info.get(device_id)
        return (info.name if info else None) or ""

    @property
    def anomaly_detection(self) -> bool:
        return self.ingest is not None and self.ingest.detects

    @property
    def has_store(self) -> bool:
        return self.ingest is not None and self.ingest.store is not None

    def recent_anomalies(
        self, limit: int = RECENT_ANOMALIES, device_id: Optional[str] = None
    ) -> list[dict[str, Any]]:
        """The newest `limit` findings in memory (of one device, or all), newest first, each
        a dict with its device's display name as "name"."""
        if self.ingest is None or limit <= 0:
            return []
        recent = self.ingest.anomalies.recent.copy()  # one step: the MQTT thread appends
        out: list[dict[str, Any]] = []
        for anomaly in reversed(recent):
            if device_id is None or anomaly.device_id == device_id:
                out.append({**anomaly.to_dict(), "name": self.display_name(anomaly.device_id)})
                if len(out) >= limit:
                    break
        return out

    def devices(self) -> Iterator[DeviceStats]:
        """Every device heard, then those in the device-info file never heard (all zero)."""
        seen = self.acc.snapshot()
        yield from seen
        known = {d.device_id for d in seen}
        for device_id in sorted(self.info):
            if device_id not in known:
                yield DeviceStats(device_id, 0.0)

    def broker_up(self) -> bool:
        return self.connected() and self.broker.fresh()

    def snapshot(self) -> dict[str, Any]:
        """The dashboard's state: fleet totals and one row (a list, ROW_COLUMNS) per device;
        with anomaly detection on, the newest findings too (recent_anomalies)."""
        now = self.clock()
        rates = self.rates.devices(self.acc, time.monotonic())
        rows: list[list[Any]] = []
        online = gaps = duplicates = 0
        detecting = self.anomaly_detection
        per_device = self.ingest.anomalies.per_device() if self.ingest is not None else {}
        for dev in self.devices():
            info = self.info.get(dev.device_id) or DeviceInfo()
            is_online = self.online(dev, now)
            online += is_online
            dev_gaps, dev_dups = dev.gaps, dev.duplicates
            gaps += dev_gaps
            duplicates += dev_dups
            data = dev.data or {}
            rows.append(
                [
                    dev.device_id, self.name(dev), info.arch, info.host, is_online, dev.status,
                    dev.last_seen if dev.received else None,
                    round(rates.get(dev.device_id, 0.0), 3), dev.received, dev.valid,
                    dev.invalid_total, dev_gaps, dev_dups, dev.resets, dev.agent_overflow,
                    dev.agent_reconnects, per_device.get(dev.device_id, 0),
                    *(data.get(name) for name in DATA_FIELDS),
                ]
            )  # fmt: skip
        acc = self.acc
        p50, p99 = acc.latency.quantile(0.5), acc.latency.quantile(0.99)
        totals = {
            "devices": len(rows),
            "online": online,
            "offline": len(rows) - online,
            "rate": round(self.rates.fleet(), 2),
            "received": acc.received,
            "valid": acc.valid,
            "invalid": acc.invalid_total,
            "gaps": gaps,
            "duplicates": duplicates,
            "anomalies": sum(per_device.values()),
            "latency_p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "latency_p99_ms": None if p99 is None else round(p99 * 1000, 2),
            "connected": self.connected(),
            "broker_up": self.broker_up(),
            "broker_clients": self.broker.values.get("clients_connected"),
        }
        return {
            "time": now,
            "offline_after": self.offline_after,
            "totals": totals,
            "columns": ROW_COLUMNS,
            "devices": rows,
            "anomaly_detection": detecting,
            "store": self.has_store,
            "recent_anomalies": self.recent_anomalies() if detecting else [],
        }
