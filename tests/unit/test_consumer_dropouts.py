"""DropoutJudge: planned stops, fleet-wide silences and the consumer's own stalls are not the
devices' dropouts; a device's own silence still is, exactly once."""

from __future__ import annotations

from edge_consumer.accounting import DeviceStats
from edge_consumer.anomaly import Anomaly
from edge_consumer.anomaly.record import DEVICE
from edge_consumer.dropouts import (
    FLEET_HOLD,
    RESTART_BOUND,
    STALL_AFTER,
    WINDOW,
    DropoutJudge,
)

T0 = 1_700_000_000.0
INTERVAL = 1.0


class Clock:
    def __init__(self) -> None:
        self.mono = 100.0

    def __call__(self) -> float:
        return self.mono


class Fleet:
    """N devices publishing every INTERVAL until told otherwise, judged as the service does."""

    def __init__(self, n: int, listed: set[str] | None = None) -> None:
        self.now = T0
        self.clock = Clock()
        self.devices = {f"d{i}": DeviceStats(f"d{i}", T0) for i in range(n)}
        self.silent: set[str] = set()
        self.judge = DropoutJudge(
            self.devices,
            fleet=(lambda d: d in listed) if listed is not None else None,
            clock=self.clock,
        )
        self.reported: list[Anomaly] = []
        self.events: list[str] = []

    def dropout(self, device: str) -> Anomaly:
        silent = self.now - self.devices[device].last_seen
        return Anomaly(
            device, DEVICE, "dropout", 7, self.now, silent, silent / INTERVAL,
            f"silent for {silent:.1f} s since seq 7 (usual interval {INTERVAL:.1f} s)",
        )  # fmt: skip

    def run(self, seconds: float, found_at: dict[float, list[str]] | None = None,
            connected: bool = True, step: float = 0.1) -> None:  # fmt: skip
        """Advance time; at offset t (from found_at) the engine finds these devices silent."""
        todo = sorted((found_at or {}).items())
        steps = round(seconds / step)
        for i in range(1, steps + 1):
            self.now += step
            self.clock.mono += step
            found = []
            while todo and todo[0][0] <= i * step + 1e-6:
                found += [self.dropout(d) for d in todo.pop(0)[1]]
            self.reported += self.judge.judge(found, self.now, connected)
            self.events += [e.cause for e in self.judge.take_events()]
            # Then the readings of this tick arrive.
            for name, dev in self.devices.items():
                if name not in self.silent and connected:
                    dev.last_seen = self.now

    def stop(self, device: str, clean: bool) -> None:
        self.silent.add(device)
        if clean:
            self.devices[device].stopped_at = self.now + 0.2  # `offline` right after


def test_a_clean_restart_is_held_as_restarting_and_never_reported() -> None:
    fleet = Fleet(10)
    fleet.run(5)
    fleet.stop("d1", clean=True)
    fleet.run(4, {3.5: ["d1"]})  # the engine finds it silent after 3 intervals
    assert fleet.judge.restarting == {"d1"}
    fleet.silent.discard("d1")  # it comes back
    fleet.run(WINDOW + 2)
    assert fleet.reported == [] and fleet.events == []
    assert fleet.judge.restarting == set()


def test_a_clean_stop_that_never_comes_back_is_reported_once_after_the_bound() -> None:
    fleet = Fleet(10)
    fleet.run(5)
    fleet.stop("d1", clean=True)
    fleet.run(RESTART_BOUND + 5, {3.5: ["d1"]})
    assert [a.device_id for a in fleet.reported] == ["d1"]
    assert "not back" in fleet.reported[0].detail and "stopped cleanly" in fleet.reported[0].detail
    assert fleet.events == []


def test_a_silent_device_whose_will_came_late_is_a_dropout_reported_once() -> None:
    fleet = Fleet(10)
    fleet.run(5)
    fleet.stop("d1", clean=False)  # frozen or cut off: no `offline` until the will
    fleet.run(WINDOW + 5, {3.5: ["d1"]})
    fleet.devices["d1"].stopped_at = fleet.now  # the will, after the keepalive timeout
    fleet.run(30)
    assert [a.device_id for a in fleet.reported] == ["d1"]
    assert fleet.events == []


def test_half_the_fleet_silent_at_once_is_one_fleet_event_and_no_dropout() -> None:
    fleet = Fleet(10)
    fleet.run(5)
    gone = [f"d{i}" for i in range(6)]
    fleet.silent.update(gone)
    # The engine finds them one by one over 2 s, as their intervals come due.
    fleet.run(10, {3.2: gone[:2], 3.8: gone[2:4], 5.0: gone[4:]})
    assert fleet.events == ["upstream"]
    assert fleet.reported == []
    fleet.silent.clear()  # the broker is back: they all publish again
    fleet.run(FLEET_HOLD + 5)
    assert fleet.reported == [] and fleet.events == ["upstream"]
    # The event is over: one device's own silence later is its own dropout again.
    fleet.silent.add("d7")
    fleet.run(WINDOW + 5, {3.5: ["d7"]})
    assert [a.device_id for a in fleet.reported] == ["d7"]
    assert fleet.events == ["upstream"]


def test_devices_that_stay_silent_after_a_fleet_event_are_reported_each() -> None:
    fleet = Fleet(10)
    fleet.run(5)
    gone = [f"d{i}" for i in range(6)]
    fleet.silent.update(gone)
    fleet.run(5, {3.5: gone})
    fleet.silent.difference_update(gone[:5])  # all but d5 come back
    fleet.run(FLEET_HOLD + 5)
    assert fleet.events == ["upstream"]
    assert [a.device_id for a in fleet.reported] == ["d5"]


def test_one_device_silent_among_many_is_its_own_dropout() -> None:
    fleet = Fleet(10)
    fleet.run(5)
    fleet.stop("d3", clean=False)
    fleet.run(WINDOW - 1, {0.5: ["d3"]})
    assert fleet.reported == []  # it waits WINDOW for others to join
    fleet.run(3)
    assert [a.device_id for a in fleet.reported] == ["d3"]
    fleet.run(30)
    assert len(fleet.reported) == 1 and fleet.events == []


def test_the_consumers_own_stall_is_one_event_not_a_dropout_per_device() -> None:
    fleet = Fleet(10)
    fleet.run(5)
    # Frozen for 20 s (docker pause): no tick ran; on waking every device looks silent.
    fleet.now += 20.0
    fleet.clock.mono += 20.0
    fleet.run(0.1, {0.1: list(fleet.devices)})
    fleet.run(FLEET_HOLD)
    assert fleet.events == ["consumer_stall"]
    assert fleet.reported == []
    assert STALL_AFTER < 20.0


def test_silence_while_the_consumer_was_disconnected_is_the_consumers_event() -> None:
    fleet = Fleet(10)
    fleet.run(5)
    fleet.run(8, connected=False)  # the broker restarts: nobody is heard
    fleet.run(0.1, {0.1: list(fleet.devices)})
    fleet.run(FLEET_HOLD)
    assert fleet.events == ["consumer_disconnected"]
    assert fleet.reported == []


def test_a_device_the_fleet_no_longer_lists_is_not_a_dropout() -> None:
    fleet = Fleet(3, listed={"d0", "d1"})
    fleet.run(5)
    fleet.stop("d2", clean=True)  # scaled down: stopped and removed
    fleet.run(RESTART_BOUND + 10, {3.5: ["d2"]})
    assert fleet.reported == [] and fleet.events == []


def test_other_findings_pass_through_at_once() -> None:
    fleet = Fleet(3)
    spike = Anomaly("d0", "temp", "spike", 3, T0, 99.0, 12.0, "temp 99")
    assert fleet.judge.judge([spike], T0 + 0.1, True) == [spike]
