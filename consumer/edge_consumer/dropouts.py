"""Which silences are the devices' own.

The anomaly engine reports a device as a dropout when it has been silent for k of its
intervals, on the consumer's clock. Three kinds of silence are not the device's fault, and a
fleet that raised an alarm for each would raise thousands after a routine deploy:

- **A planned stop.** An agent that stops cleanly (systemd stop or restart, a redeploy)
  publishes `offline` on its status topic within moments of its last reading; its will says
  `offline` too, but only after the broker's keepalive timeout. A dropout whose device said
  `offline` within STOP_SLACK of its last reading is held as *restarting* until the device is
  heard again, and reported only if it stays silent RESTART_BOUND past its stop.
- **The consumer's own stall or outage.** A main loop that fell behind (a starved or frozen
  monitor) or a lost connection to the broker makes every device look silent on the consumer's
  clock. Dropouts whose silence overlaps such a stretch are one fleet-level event naming it.
- **A fleet-wide silence.** When FLEET_SHARE of the devices heard recently (and at least
  FLEET_MIN) go silent within WINDOW seconds of each other, the cause is upstream of them: the
  broker, the network, the consumer's host. They become one fleet-level event; each device is
  held, and reported only if it is not heard again within FLEET_HOLD.

Every dropout waits WINDOW seconds before it is reported, so that the others of a fleet-wide
silence can join it. Times are the consumer's wall clock (time.time()), as Accounting's
last_seen and stopped_at are; stalls are measured on the monotonic clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .accounting import DeviceStats
from .anomaly import Anomaly

STALL_AFTER = 2.0  # s between two ticks (normally 0.1 s apart): the consumer itself stalled
WINDOW = 5.0  # s a dropout waits for others; devices of one interval fall silent within it
FLEET_SHARE = 0.5  # of the devices heard in the last ACTIVE_WITHIN s
FLEET_MIN = 3  # a fleet-level event needs at least this many silent devices
ACTIVE_WITHIN = 300.0  # s: a device heard this recently counts towards the fleet
STOP_SLACK = 5.0  # s: a clean stop says offline this soon after the last reading (at most
# 1.5 intervals for slow publishers); a will comes only after 1.5 keepalives
RESTART_BOUND = 60.0  # s a device that stopped cleanly may take to come back
FLEET_HOLD = 60.0  # s the devices of a fleet-level event may take to come back
# The engine's two dropouts: found by tick() while the silence goes on ("silent for ..."), or
# found when the reading after a gap arrives ("no reading for ..."): that silence is over.
ONGOING = "silent for "
FLEET_SILENCE_CAUSES = ("consumer_stall", "consumer_disconnected", "upstream")


@dataclass(frozen=True)
class FleetEvent:
    """One fleet-level silence: many devices, one cause."""

    started: float  # wall clock: when the silence began
    devices: int  # how many devices it covered when it was reported
    active: int  # devices heard in the last ACTIVE_WITHIN s
    cause: str  # "consumer_stall", "consumer_disconnected" or "upstream"
    detail: str  # one line for people

    def to_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "devices": self.devices,
            "active": self.active,
            "cause": self.cause,
            "detail": self.detail,
        }


@dataclass
class _Held:
    anomaly: Anomaly
    since: float  # wall clock: when the device was last heard before the silence
    deadline: float  # report it if it is still silent then
    reason: str  # why it was held, for the report if it does not come back
    planned: bool  # a clean stop (restarting); otherwise part of a fleet-level event


@dataclass
class _Pending:
    anomaly: Anomaly
    seen: float  # wall clock: when the judge first saw the dropout
    since: float  # when the device was last heard


@dataclass
class _OwnGap:
    """A stretch when the consumer could not hear anyone: a stall or a lost connection."""

    start: float
    end: float
    cause: str
    reported: bool = False


@dataclass
class DropoutJudge:
    """Filters the engine's findings: dropouts that are not the device's own are held or
    folded into one FleetEvent; everything else passes through unchanged."""

    devices: Mapping[str, DeviceStats]  # Accounting.devices
    fleet: Optional[Callable[[str], bool]] = None  # is this device (still) in the fleet?
    clock: Callable[[], float] = time.monotonic  # for stalls of the consumer's own loop
    held: dict[str, _Held] = field(default_factory=dict)
    pending: list[_Pending] = field(default_factory=list)
    events: list[FleetEvent] = field(default_factory=list)
    _own: list[_OwnGap] = field(default_factory=list)
    _last_tick: Optional[float] = None
    _disconnected: Optional[float] = None
    _open_event: Optional[FleetEvent] = None

    @property
    def restarting(self) -> set[str]:
        """Devices held after a clean stop: shown as restarting, not as anomalous."""
        return {d for d, h in self.held.items() if h.planned}

    def judge(self, found: list[Anomaly], now: float, connected: bool) -> list[Anomaly]:
        """The findings to report now; fleet-level events go to `events` (and are returned by
        take_events()). `now` is the wall clock; call often (each main-loop tick)."""
        self._note_own_gaps(now, connected)
        out: list[Anomaly] = []
        for a in found:
            if a.kind != "dropout":
                out.append(a)
            elif self.fleet is None or self.fleet(a.device_id):
                self._admit(a, now)
        out += self._decide(now)
        out += self._release(now)
        return out

    def take_events(self) -> list[FleetEvent]:
        events, self.events = self.events, []
        return events

    # --- the consumer's own gaps ----------------------------------------------------------

    def _note_own_gaps(self, now: float, connected: bool) -> None:
        mono = self.clock()
        if self._last_tick is not None and mono - self._last_tick > STALL_AFTER:
            lag = mono - self._last_tick
            self._own.append(_OwnGap(now - lag, now, "consumer_stall"))
        self._last_tick = mono
        if not connected and self._disconnected is None:
            self._disconnected = now
        elif connected and self._disconnected is not None:
            self._own.append(_OwnGap(self._disconnected, now, "consumer_disconnected"))
            self._disconnected = None
        # A gap matters to silences that overlap it: at most FLEET_HOLD old.
        self._own = [g for g in self._own if now - g.end <= FLEET_HOLD]

    def _own_gap(self, since: float, now: float) -> Optional[_OwnGap]:
        """The consumer's own stall or outage within this silence, if any."""
        for gap in self._own:
            if gap.end >= since and gap.start <= now:
                return gap
        if self._disconnected is not None:
            return _OwnGap(self._disconnected, now, "consumer_disconnected")
        return None

    # --- admitting a dropout --------------------------------------------------------------

    def _admit(self, a: Anomaly, now: float) -> None:
        if a.device_id in self.held or any(
            p.anomaly.device_id == a.device_id for p in self.pending
        ):
            return
        dev = self.devices.get(a.device_id)
        ongoing = a.detail.startswith(ONGOING)
        # When the device was last heard before the silence, on the consumer's clock.
        since = now - a.value
        if ongoing:
            since = dev.last_seen if dev is not None else a.ts - a.value
        gap = self._own_gap(since, now)
        if gap is not None:
            if not gap.reported:
                gap.reported = True
                self._event(since, 1, gap.cause, self._own_detail(gap))
            self._hold(a, ongoing, since, now + FLEET_HOLD, f"the consumer's own {gap.cause}")
            return
        stopped = dev.stopped_at if dev is not None else None
        if stopped is not None and since - 1.0 <= stopped <= since + STOP_SLACK:
            reason = f"stopped cleanly at {stopped:.0f}"
            self._hold(a, ongoing, since, stopped + RESTART_BOUND, reason, planned=True)
            return
        if self._open_event is not None:  # the fleet-level silence still going on
            self._hold(a, ongoing, since, now + FLEET_HOLD, "the fleet-level silence")
            return
        self.pending.append(_Pending(a, now, since))

    def _hold(
        self,
        a: Anomaly,
        ongoing: bool,
        since: float,
        deadline: float,
        reason: str,
        planned: bool = False,
    ) -> None:
        """Wait for the device to be heard again; a silence already over needs no waiting."""
        if ongoing:
            self.held[a.device_id] = _Held(a, since, deadline, reason, planned)

    # --- fleet-wide or the device's own ---------------------------------------------------

    def _active(self, now: float) -> int:
        return sum(1 for d in list(self.devices.values()) if now - d.last_seen <= ACTIVE_WITHIN)

    def _decide(self, now: float) -> list[Anomaly]:
        out: list[Anomaly] = []
        while self.pending and now - self.pending[0].seen >= WINDOW:
            first = self.pending[0]
            together = [p for p in self.pending if p.seen - first.seen <= WINDOW]
            active = max(self._active(now), len(together))
            if len(together) >= max(FLEET_MIN, math.ceil(FLEET_SHARE * active)):
                started = min(p.since for p in together)
                detail = (
                    f"{len(together)} of {active} devices went silent within {WINDOW:g} s:"
                    " the cause is upstream of them (the broker, the network or the"
                    " consumer's host)"
                )
                self._event(started, len(together), "upstream", detail)
                for p in together:
                    ongoing = p.anomaly.detail.startswith(ONGOING)
                    reason = "the fleet-level silence"
                    self._hold(p.anomaly, ongoing, p.since, now + FLEET_HOLD, reason)
                self.pending = self.pending[len(together) :]
            else:  # the device's own: reported, even if it has come back meanwhile
                out.append(self.pending.pop(0).anomaly)
        return out

    def _event(self, started: float, devices: int, cause: str, detail: str) -> None:
        event = FleetEvent(started, devices, self._active(started), cause, detail)
        self.events.append(event)
        self._open_event = event

    @staticmethod
    def _own_detail(gap: _OwnGap) -> str:
        seconds = gap.end - gap.start
        if gap.cause == "consumer_stall":
            return (
                f"the consumer itself stalled for {seconds:.1f} s (its loop fell behind):"
                " silence on its clock is not the devices'"
            )
        return (
            f"the consumer's own connection to the broker was down for {seconds:.1f} s:"
            " the broker or the network"
        )

    # --- held devices ---------------------------------------------------------------------

    def _heard_since(self, device_id: str, since: float) -> bool:
        dev = self.devices.get(device_id)
        return dev is not None and dev.last_seen > since

    def _release(self, now: float) -> list[Anomaly]:
        out: list[Anomaly] = []
        for device_id, h in list(self.held.items()):
            if self._heard_since(device_id, h.since):
                del self.held[device_id]
            elif now >= h.deadline:
                del self.held[device_id]
                a = h.anomaly
                silent = now - h.since
                out.append(
                    a._replace(
                        ts=now,
                        value=silent,
                        detail=f"{a.detail}; not back {silent:.0f} s later, after {h.reason}",
                    )
                )
        if self._open_event is not None and all(h.planned for h in self.held.values()):
            self._open_event = None
        return out
