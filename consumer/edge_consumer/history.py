"""Recent readings per device for the dashboard's charts, in constant memory.

The web app reads history only through the `History` protocol: in-memory rings (RingHistory)
without a telemetry store, the store itself (StoreHistory) with one.
"""

from __future__ import annotations

import math
import threading
from array import array
from typing import TYPE_CHECKING, Any, Optional, Protocol

from edge_agent.protocol import DATA_FIELDS

if TYPE_CHECKING:
    from .store import TelemetryStore

COLUMNS = ("ts", *DATA_FIELDS)  # one row: receive time (Unix s), then every sensor
_WIDTH = len(COLUMNS)
SAMPLES = 120  # per device: 10 minutes at the agent's default 5 s interval
SAMPLE_EVERY = 1.0  # s: at most one sample per device per second, so floods stay cheap

Series = dict[str, list[Optional[float]]]  # column -> values, oldest first; bools as 0/1


class History(Protocol):
    def recent(self, device_id: str, since: float) -> Optional[Series]:
        """The device's samples received at or after `since` (Unix s); None if unknown."""


class _Ring:
    __slots__ = ("count", "rows", "write")

    def __init__(self, capacity: int) -> None:
        self.rows = array("d", [math.nan]) * (capacity * _WIDTH)
        self.write = 0  # the next row to overwrite
        self.count = 0


class RingHistory:
    """A fixed ring of `capacity` rows per device (array('d'): 8 bytes per value).

    `record` runs on the MQTT thread (Accounting.recorder); `recent` on the web thread. A row
    is filled before it is counted, and readers copy the array in one step under the GIL, so
    a reader sees whole rows except, at worst, the one being overwritten.
    """

    def __init__(self, capacity: int = SAMPLES) -> None:
        self.capacity = capacity
        self._rings: dict[str, _Ring] = {}
        self._new = threading.Lock()  # only ring creation; recording itself takes no lock

    def record(self, device_id: str, now: float, data: dict[str, Any]) -> None:
        ring = self._rings.get(device_id)
        if ring is None:
            with self._new:
                ring = self._rings.setdefault(device_id, _Ring(self.capacity))
        base = ring.write * _WIDTH
        rows = ring.rows
        rows[base] = now
        for i, name in enumerate(DATA_FIELDS, 1):
            rows[base + i] = float(data[name])  # bools become 0.0/1.0
        ring.write = (ring.write + 1) % self.capacity
        if ring.count < self.capacity:
            ring.count += 1

    def recent(self, device_id: str, since: float) -> Optional[Series]:
        ring = self._rings.get(device_id)
        if ring is None:
            return None
        count, write, rows = ring.count, ring.write, ring.rows[:]  # one atomic copy
        first = (write - count) % self.capacity
        series: Series = {name: [] for name in COLUMNS}
        columns = [series[name] for name in COLUMNS]
        for k in range(count):
            base = ((first + k) % self.capacity) * _WIDTH
            if rows[base] < since:
                continue
            for i, column in enumerate(columns):
                value = rows[base + i]
                column.append(None if math.isnan(value) else value)
        return series

    def __len__(self) -> int:
        return len(self._rings)


class StoreHistory:
    """History read from the telemetry store: the charts show what was stored, over any span
    the store keeps, and survive a restart of the service. `store` is the web side's own
    connection (reads never wait behind the writer's batches)."""

    def __init__(self, store: TelemetryStore, limit: int = 2000) -> None:
        self.store = store
        self.limit = limit  # rows per request: the newest ones when the span holds more

    def recent(self, device_id: str, since: float) -> Optional[Series]:
        rows = self.store.recent(device_id, since, self.limit)
        if not rows:
            return None
        series: Series = {name: [] for name in COLUMNS}
        series["ts"] = [row.ts for row in rows]
        for name in DATA_FIELDS:
            series[name] = [float(getattr(row, name)) for row in rows]
        return series
