"""Zero-loss telemetry under faults, on a real emulated fleet.

One fleet of 20 devices publishing at 2 msg/s, deployed by site.yml with TLS and
authentication. One persistent consumer session (fleet_watch.FleetWatch) accounts for every
reading; each test is a window of it and asserts the consumer's exact per-device seq accounting:
zero gaps inside the window, and no seq lost between the previous window and this one.

The tests run in file order; the broker faults come after the consumer's session has been saved
to the broker's persistence file, as a long-running consumer's would be.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from edge_agent.agent import SAVE_EVERY_ACKS
from edge_agent.publisher import WINDOW
from fleet_helpers import (
    PlaybookRun,
    agent_reports,
    agent_restarts,
    agent_starts_since,
    agent_unit,
    ansible_playbook,
    device_env,
    docker,
    env_path,
    fleet_cache,
    fleet_passwords,
    free_port,
    on,
    require_docker,
    wait_until,
    write_emulated_inventory,
)
from fleet_watch import POLL, BrokerLog, FleetWatch, WatchedFleet, broker_log

pytestmark = [pytest.mark.fleet, pytest.mark.fault]

NAME = "edge-faults"
DEVICES = 20
INTERVAL = 0.5  # s between readings: 2 msg/s per device
BROKER = f"{NAME}-broker"
RECONNECT_LIMIT = 15.0  # s: every agent is back this soon after the broker is


def device(n: int) -> str:
    """Device n; with one device per host, its host (container) carries the same name."""
    return f"{NAME}-pi-{n:04d}"


@dataclass
class Fleet(WatchedFleet):
    inventory: list[str] = field(default_factory=list)

    def deploy(self, *extra: str) -> PlaybookRun:
        return ansible_playbook(
            "site.yml", *self.inventory, "-e", f"device_count={DEVICES}",
            "-e", f"edge_agent_publish_interval={INTERVAL}", *extra,
        )  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_docker()
    port = free_port()
    directory = write_emulated_inventory(
        tmp_path_factory.mktemp("inventory") / "emulated",
        NAME,
        broker_tls_port=port,
    )
    inventory = ["-i", str(directory)]
    workdir = tmp_path_factory.mktemp("watch")
    try:
        watch = FleetWatch(port, fleet_cache(NAME) / "pki" / "ca.crt", Path(), workdir)
        fleet = Fleet(watch, {}, inventory=inventory)
        run = fleet.deploy()
        assert run.rc == 0, run.output[-3000:]
        password_file = workdir / "consumer.password"
        password_file.touch(mode=0o600)
        password_file.write_text(fleet_passwords(NAME)["consumer"] + "\n")
        fleet.watch.password_file = password_file
        fleet.set_ids(
            {
                device(n): device_env(device(n), device(n))["DEVICE_ID"]
                for n in range(1, DEVICES + 1)
            }
        )
        yield fleet
    finally:
        ansible_playbook("playbooks/teardown.yml", *inventory)


def reconnect_times(log: BrokerLog, users: list[str], after: float) -> dict[str, float]:
    """Seconds from `after` to each user's first connection, for those that connected."""
    times = {}
    for user in users:
        later = [t for t in log.connects.get(user, []) if t >= after]
        if later:
            times[user] = min(later) - after
    return times


def test_agent_crash_resumes_from_its_saved_position(fleet: Fleet) -> None:
    target = device(3)
    restarts_before = agent_restarts(target, target)
    fleet.open_window()
    killed = time.time()
    on(target, f"systemctl kill --signal=SIGKILL {agent_unit(target)}")
    assert wait_until(lambda: agent_restarts(target, target) == restarts_before + 1, 30, POLL)
    assert wait_until(lambda: target in broker_log(BROKER, killed).connects, 30, POLL)
    back = reconnect_times(broker_log(BROKER, killed), [target], killed)[target]
    fleet.wait_caught_up(time.time())
    window = fleet.close_window("agent SIGKILL", back)
    # A restart resends what was in flight and what was acked after the last state save.
    assert window.devices[fleet.ids[target]]["duplicates"] <= WINDOW + SAVE_EVERY_ACKS


def test_device_reboot_brings_the_agent_back_on_boot(fleet: Fleet) -> None:
    target = device(4)
    fleet.open_window()
    rebooted = time.time()
    docker("restart", target)
    assert wait_until(lambda: target in broker_log(BROKER, rebooted).connects, 90, POLL)
    back = reconnect_times(broker_log(BROKER, rebooted), [target], rebooted)[target]
    assert on(target, f"systemctl is-enabled {agent_unit(target)}").strip() == "enabled"
    fleet.wait_caught_up(time.time())
    fleet.close_window("device reboot", back)


def test_consumer_away_30s_gets_everything_on_return(fleet: Fleet) -> None:
    fleet.open_window()
    first = fleet.watch.stop()
    fleet.check_window(first)
    before = {mac: record["seq_max"] for mac, record in first.devices.items()}
    time.sleep(30)
    returned = time.time()
    fleet.watch.start()
    fleet.wait_caught_up(returned)
    window = fleet.close_window("consumer away 30 s", time.time() - returned)
    for mac, record in window.devices.items():
        # The 30 s of readings the broker held for the consumer: about 60 per device.
        assert record["seq_max"] - before[mac] >= 30 / INTERVAL * 0.8, fleet.names[mac]


def cut_network(container: str, seconds: float) -> float:
    """Disconnect `container` from the fleet network for `seconds`; returns when it is back."""
    docker("network", "disconnect", NAME, container)
    time.sleep(seconds)
    docker("network", "connect", NAME, container)
    return time.time()


def test_network_cut_60s_delivers_the_backlog(fleet: Fleet) -> None:
    target = device(5)
    fleet.open_window()
    reconnected = cut_network(target, 60)
    assert wait_until(lambda: target in broker_log(BROKER, reconnected).connects, 60, POLL)
    back = reconnect_times(broker_log(BROKER, reconnected), [target], reconnected)[target]
    fleet.wait_caught_up(time.time())
    window = fleet.close_window("network cut 60 s", back)
    record = window.devices[fleet.ids[target]]
    assert record["agent_overflow"] == 0
    assert record["valid"] >= 60 / INTERVAL  # the backlog, delivered late but whole


def test_network_cut_beyond_the_queue_counts_every_lost_reading(fleet: Fleet) -> None:
    target = device(6)
    mac = fleet.ids[target]
    env, unit = env_path(target), agent_unit(target)
    # A queue of 10 readings (5 s) on one device, so that a 40 s cut overflows it.
    on(target, f"cp -a {env} /root/agent.env.bak && sed -i 's/^QUEUE_SIZE=.*/QUEUE_SIZE=10/' {env}")
    on(target, f"systemctl restart {unit}")
    try:
        fleet.open_window()
        overflow_before = fleet.watch.snapshot()[mac].overflow
        reconnected = cut_network(target, 40)
        assert wait_until(lambda: target in broker_log(BROKER, reconnected).connects, 60, POLL)
        back = reconnect_times(broker_log(BROKER, reconnected), [target], reconnected)[target]
        fleet.wait_caught_up(time.time())
        dropped = fleet.watch.snapshot()[mac].overflow - overflow_before
        assert dropped > 0, "the cut did not overflow the queue"
        # The readings missing at the consumer must be exactly the ones the agent reported.
        fleet.dropped[mac] = fleet.dropped.get(mac, 0) + dropped
        fleet.close_window("network cut 40 s, queue overflow", back)
    finally:
        on(target, f"cp -a /root/agent.env.bak {env} && systemctl restart {unit}")


def kill_broker_and_measure(fleet: Fleet, fault: str, inject: Any) -> None:
    fleet.open_window()
    started = time.time()
    inject()
    users = list(fleet.ids)
    assert wait_until(
        lambda: len(reconnect_times(broker_log(BROKER, started), users, started)) == DEVICES,
        90,
        POLL,
    ), "not every agent reconnected"
    log = broker_log(BROKER, started)
    assert log.starts, "mosquitto did not start again"
    broker_back = log.starts[-1]
    slowest = max(reconnect_times(log, users, broker_back).values())
    assert slowest <= RECONNECT_LIMIT, f"an agent took {slowest:.1f} s to reconnect"
    fleet.wait_caught_up(time.time())
    fleet.close_window(fault, max(reconnect_times(log, users, started).values()))


def test_broker_sigkill_loses_nothing(fleet: Fleet) -> None:
    # A consumer session younger than mosquitto's autosave interval is not on disk yet and
    # would not survive SIGKILL (README, "Limits"); wait for the save as a long-running
    # consumer would have.
    def saved() -> bool:
        mtime = on(BROKER, "stat -c %Y /var/lib/mosquitto/mosquitto.db 2>/dev/null || echo 0")
        return float(mtime) > fleet.session_saved

    assert wait_until(saved, 90, interval=2), "the broker never saved its persistence file"
    kill_broker_and_measure(
        fleet,
        "broker SIGKILL",
        lambda: on(BROKER, "systemctl kill --signal=SIGKILL mosquitto"),
    )


def test_broker_host_reboot_loses_nothing(fleet: Fleet) -> None:
    kill_broker_and_measure(fleet, "broker host reboot", lambda: docker("restart", BROKER))


def test_redeploy_under_load_restarts_each_agent_once(fleet: Fleet) -> None:
    fleet.open_window()
    started = time.time()
    run = fleet.deploy("-e", "edge_agent_publish_interval=0.4")
    assert run.rc == 0, run.output[-3000:]
    # The role restarted every agent, each once, and nothing else (one device per host).
    reports = {
        host: (r.restarted, r.agents, r.removed) for host, r in agent_reports(run.output).items()
    }
    assert reports == dict.fromkeys(fleet.ids, (1, 1, [])), reports
    starts = {name: agent_starts_since(name, name, started) for name in fleet.ids}
    assert starts == dict.fromkeys(fleet.ids, 1), starts
    log = broker_log(BROKER, started)
    counts = {user: len(log.connects.get(user, [])) for user in fleet.ids}
    assert counts == dict.fromkeys(fleet.ids, 1), counts
    fleet.wait_caught_up(time.time())
    # Recovery: the longest time any one agent was away from the broker for its restart.
    fleet.close_window("redeploy under load", max(log.downtime(user) for user in fleet.ids))
