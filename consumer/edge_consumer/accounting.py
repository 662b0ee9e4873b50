"""Per-device accounting with bounded memory: seqs as runs, latency as a log histogram.

Everything here runs on paho's network thread, once per message: keep it lean. Readers on
other threads only take snapshots (plain ints and small copies), which the GIL keeps sane.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Any, Callable, Optional, Union

from edge_agent.protocol import (
    STATUS_OFFLINE,
    STATUS_ONLINE,
    STATUS_PREFIX,
    TELEMETRY_PREFIX,
    device_from_topic,
)

from .validation import REASONS, Telemetry, Validator

# Latency histogram: bucket 0 holds <= 0.1 ms (and negative values from clock skew); bucket
# b >= 1 holds (0.1 ms * 1.05**(b-1), 0.1 ms * 1.05**b], so quantiles are within 5 %.
_LAT_FLOOR = 1e-4
_LAT_GROWTH = 1.05
_LAT_SCALE = 1.0 / math.log(_LAT_GROWTH)
_LAT_MAX_BUCKET = 700  # ~ 0.1 ms * 1.05**700 = 5e10 s: anything beyond is clamped
_log = math.log


def latency_bucket(seconds: float) -> int:
    if seconds <= _LAT_FLOOR:
        return 0
    bucket = int(_log(seconds / _LAT_FLOOR) * _LAT_SCALE) + 1
    return bucket if bucket < _LAT_MAX_BUCKET else _LAT_MAX_BUCKET


def bucket_upper(bucket: int) -> float:
    return _LAT_FLOOR * _LAT_GROWTH**bucket


class Histogram:
    """Fixed log-bucket histogram; memory is bounded by the bucket count."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.total = 0

    def add_bucket(self, bucket: int) -> None:
        counts = self.counts
        counts[bucket] = counts.get(bucket, 0) + 1
        self.total += 1

    def add(self, seconds: float) -> None:
        self.add_bucket(latency_bucket(seconds))

    def quantile(self, q: float) -> Optional[float]:
        """Upper edge of the bucket holding the q-quantile, in seconds (None when empty)."""
        if not self.total:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return bucket_upper(bucket)
        return bucket_upper(max(self.counts))  # pragma: no cover - rank <= total


class SeqSet:
    """Distinct seqs as sorted disjoint runs [start, end).

    In-order traffic keeps a single run whose end is the watermark, so memory grows with the
    number of holes, not with the number of messages.
    """

    __slots__ = ("distinct", "ends", "starts")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.distinct = 0

    def add(self, seq: int) -> bool:
        """Record seq; False when it was already seen (a duplicate)."""
        ends = self.ends
        if ends and seq == ends[-1]:  # fast path: the next seq in order
            ends[-1] = seq + 1
            self.distinct += 1
            return True
        starts = self.starts
        i = bisect_right(starts, seq)  # runs[i-1] is the last run starting at or before seq
        if i and seq < ends[i - 1]:
            return False
        join_left = i > 0 and ends[i - 1] == seq
        join_right = i < len(starts) and starts[i] == seq + 1
        if join_left and join_right:
            ends[i - 1] = ends[i]
            del starts[i]
            del ends[i]
        elif join_left:
            ends[i - 1] = seq + 1
        elif join_right:
            starts[i] = seq
        else:
            starts.insert(i, seq)
            ends.insert(i, seq + 1)
        self.distinct += 1
        return True

    def __contains__(self, seq: int) -> bool:
        i = bisect_right(self.starts, seq)
        return bool(i) and seq < self.ends[i - 1]

    @property
    def min(self) -> Optional[int]:
        return self.starts[0] if self.starts else None

    @property
    def max(self) -> Optional[int]:
        return self.ends[-1] - 1 if self.ends else None

    @property
    def gaps(self) -> int:
        """Seqs missing between the lowest and highest seen."""
        if not self.starts:
            return 0
        return self.ends[-1] - self.starts[0] - self.distinct

    def missing_ranges(self, limit: int = 10) -> list[tuple[int, int]]:
        """The first `limit` holes as inclusive (first, last) pairs."""
        holes = zip(self.ends, self.starts[1:])
        return [(end, start - 1) for end, start in list(holes)[:limit]]


class DeviceStats:
    __slots__ = (
        "agent_overflow",
        "agent_reconnects",
        "agent_skipped",
        "data",
        "device_id",
        "epoch",
        "first_seen",
        "invalid",
        "last_seen",
        "latency",
        "name",
        "next_sample",
        "onlines",
        "past_distinct",
        "past_gaps",
        "received",
        "resets",
        "seqs",
        "status",
        "status_changes",
        "stopped_at",
        "valid",
    )

    def __init__(self, device_id: str, now: float) -> None:
        self.device_id = device_id
        self.name: Optional[str] = None
        self.received = 0  # telemetry messages on this device's topic, valid or not
        self.valid = 0
        self.invalid: dict[str, int] = {}
        self.first_seen = now  # of telemetry; reset by the first message
        self.last_seen = now
        self.seqs = SeqSet()  # of the current epoch
        self.epoch: Optional[int] = None  # the latest epoch heard (None: none yet, old agents)
        self.resets = 0  # epoch changes: the device lost its state and started at seq 0 again
        self.past_distinct = 0  # distinct seqs and gaps of the epochs before the current one
        self.past_gaps = 0
        self.latency = Histogram()
        self.status: Optional[str] = None  # online/offline from the retained status topic
        self.status_changes = 0
        # When a live (not retained) `offline` last came: a clean stop says so at once, a will
        # only after the broker's keepalive timeout (dropouts.py tells them apart).
        self.stopped_at: Optional[float] = None
        self.onlines = 0
        self.agent_overflow: Optional[int] = None  # latest stats.* the agent reported
        self.agent_reconnects: Optional[int] = None
        self.agent_skipped: Optional[int] = None
        self.data: Optional[dict[str, Any]] = None  # the last valid readings (not a copy)
        self.next_sample = 0.0  # when Accounting.recorder may take this device's next sample

    @property
    def duplicates(self) -> int:
        return self.valid - self.past_distinct - self.seqs.distinct

    @property
    def gaps(self) -> int:
        return self.past_gaps + self.seqs.gaps

    def reset(self, epoch: int) -> None:
        """A new epoch: the agent starts its seqs again; the old epoch's counts are kept."""
        self.resets += 1
        self.past_distinct += self.seqs.distinct
        self.past_gaps += self.seqs.gaps
        self.seqs = SeqSet()
        self.epoch = epoch

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())

    @property
    def status_reconnects(self) -> int:
        """`online` announcements after the first one we saw: each is a reconnect."""
        return max(0, self.onlines - 1)

    @property
    def rate(self) -> float:
        """Valid messages per second between the first and the last message heard."""
        span = self.last_seen - self.first_seen
        return (self.valid - 1) / span if span > 0 and self.valid > 1 else 0.0


class Accounting:
    """Validates and accounts for every telemetry and status message."""

    def __init__(
        self,
        topic_prefix: str = TELEMETRY_PREFIX,
        status_prefix: str = STATUS_PREFIX,
        max_payload: int = 4096,
    ) -> None:
        self.validator = Validator(topic_prefix, max_payload)
        self.topic_prefix = topic_prefix
        self.status_prefix = status_prefix
        self.devices: dict[str, DeviceStats] = {}
        self.received = 0
        self.valid = 0
        self.invalid: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.bad_status = 0  # status messages that are neither online nor offline
        self.latency = Histogram()
        self.first_message: Optional[float] = None
        self.last_message: Optional[float] = None
        # Optional history hook, called with (device_id, now, data) at most once per
        # record_every seconds per device: floods cost one float comparison per message.
        self.recorder: Optional[Callable[[str, float, dict[str, Any]], None]] = None
        self.record_every = 1.0

    def _device(self, device_id: str, now: float) -> DeviceStats:
        stats = self.devices.get(device_id)
        if stats is None:
            stats = self.devices[device_id] = DeviceStats(device_id, now)
        return stats

    def handle(self, topic: Optional[str], payload: bytes, now: float) -> Union[Telemetry, str]:
        """Validate one telemetry message and account for it; never raises on bad input."""
        self.received += 1
        if self.first_message is None:
            self.first_message = now
        self.last_message = now
        result = self.validator.validate(topic, payload)
        if type(result) is str:
            self.invalid[result] += 1
            device_id = device_from_topic(topic, self.topic_prefix) if topic else None
            if device_id is not None:
                bad = self._device(device_id, now)
                if not bad.received:
                    bad.first_seen = now
                bad.received += 1
                bad.last_seen = now
                bad.invalid[result] = bad.invalid.get(result, 0) + 1
            return result

        t: Telemetry = result  # type: ignore[assignment]
        self.valid += 1
        dev = self.devices.get(t.device_id)
        if dev is None:
            dev = self._device(t.device_id, now)
        dev.name = t.device_name
        if not dev.received:
            dev.first_seen = now
        dev.received += 1
        dev.valid += 1
        dev.last_seen = now
        epoch = t.epoch
        if epoch is not None and epoch != dev.epoch:
            if dev.epoch is None:  # first epoch heard: a new device, or an upgraded agent
                dev.epoch = epoch
            else:
                dev.reset(epoch)
        dev.seqs.add(t.seq)
        bucket = latency_bucket(now - t.ts)
        dev.latency.add_bucket(bucket)
        self.latency.add_bucket(bucket)
        stats = t.stats
        if stats is not None:
            dev.agent_overflow = stats.get("overflow", dev.agent_overflow)
            dev.agent_reconnects = stats.get("reconnects", dev.agent_reconnects)
            dev.agent_skipped = stats.get("skipped_rows", dev.agent_skipped)
        dev.data = t.data
        if self.recorder is not None and now >= dev.next_sample:
            dev.next_sample = now + self.record_every
            self.recorder(t.device_id, now, t.data)
        return t

    def handle_status(
        self, topic: str, payload: bytes, now: float, retained: bool = False
    ) -> Optional[str]:
        """Account for a status message; returns online/offline, or None when ignored.
        A retained one is the state when we subscribed, not news: it sets no stop time."""
        device_id = device_from_topic(topic, self.status_prefix)
        if device_id is None:
            self.bad_status += 1
            return None
        if not payload:  # an empty retained message clears the status: nothing to record
            return None
        status = payload.decode("utf-8", "replace").strip()
        if status not in (STATUS_ONLINE, STATUS_OFFLINE):
            self.bad_status += 1
            return None
        dev = self.devices.get(device_id)
        if dev is None:
            # Status alone is not telemetry: the device exists but has sent nothing yet.
            dev = self._device(device_id, now)
        if dev.status is not None and dev.status != status:
            dev.status_changes += 1
        dev.status = status
        if status == STATUS_ONLINE:
            dev.onlines += 1
        elif not retained:
            dev.stopped_at = now
        return status

    # -- totals ---------------------------------------------------------------------------

    def snapshot(self) -> list[DeviceStats]:
        """Devices sorted by name then ID; list() copies atomically under the GIL."""
        devices = list(self.devices.values())
        devices.sort(key=lambda d: (d.name or "", d.device_id))
        return devices

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())
