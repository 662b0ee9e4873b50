"""Zero-loss telemetry under faults, on a real emulated fleet.

One fleet of 20 devices publishing at 2 msg/s, deployed by site.yml with TLS and
authentication, and its monitor keeping every reading in PostgreSQL (fleet_telemetry_store)
while the agents inject seeded spike and stuck faults (fleet_fault_injection). One persistent
consumer session (fleet_watch.FleetWatch) accounts for every reading; each test is a window of
it and asserts the consumer's exact per-device seq accounting: zero gaps inside the window, and
no seq lost between the previous window and this one. The last tests kill the monitor's
consumer service and PostgreSQL mid-flood and compare the store with that accounting, and
check that the injected faults were flagged on iot/anomaly/+ and stored.

The tests run in file order; the broker faults come after the consumer's session has been saved
to the broker's persistence file, as a long-running consumer's would be.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import paho.mqtt.client as mqtt
import pytest
from edge_agent import faults
from edge_agent.agent import SAVE_EVERY_ACKS
from edge_agent.protocol import ANOMALY_PREFIX
from edge_agent.publisher import WINDOW
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support.fleet import (
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
    on,
    require_docker,
    write_emulated_inventory,
)
from support.polling import await_condition, wait_until
from support.ports import free_port
from support.watch import POLL, BrokerLog, FleetWatch, WatchedFleet, broker_log

pytestmark = [pytest.mark.fleet, pytest.mark.fault]

NAME = "edge-faults"
DEVICES = 20
INTERVAL = 0.5  # s between readings: 2 msg/s per device
BROKER = f"{NAME}-broker"
MONITOR = f"{NAME}-monitor"
# Spike and stuck episodes (the detectors' F1 >= 0.9 kinds) from seq 200 on; rate 0.02 gives a
# few per device over the module's run. Dropouts would make devices look lost to the windows.
FAULTS = "seed=11,rate=0.02,kinds=spike+stuck"
RECONNECT_LIMIT = 15.0  # s: every agent is back this soon after the broker is
# How long each fault lasts. Each is long enough to prove its point: the consumer's session
# queues for it, a backlog builds past mosquitto's and the agent's in-flight windows, and a
# queue of QUEUE_SIZE_SMALL readings (5 s) plus the in-flight window of WINDOW (10 s) overflows.
CONSUMER_AWAY = 15.0
NETWORK_CUT = 20.0
OVERFLOW_CUT = 25.0
QUEUE_SIZE_SMALL = 10
# The anomaly check judges injected episodes that ended at least this many readings before
# the newest stored one (the detectors' allowed delay and then some).
JUDGE_MARGIN = 10


def device(n: int) -> str:
    """Device n; with one device per host, its host (container) carries the same name."""
    return f"{NAME}-pi-{n:04d}"


class AnomalyListener:
    """The admin's persistent subscription to iot/anomaly/+, for the whole module."""

    def __init__(self, port: int, ca: Path) -> None:
        self.found: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id="faults-anomaly-listener",
            protocol=mqtt.MQTTv5,
        )
        client.username_pw_set("admin", fleet_passwords(NAME)["admin"])
        client.tls_set(ca_certs=str(ca))
        client.on_connect = lambda c, *_: c.subscribe(f"{ANOMALY_PREFIX}/+", qos=1)
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client.connect("127.0.0.1", port, clean_start=False, properties=props)
        client.loop_start()
        self.client = client

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        record = json.loads(msg.payload)
        with self._lock:
            self.found.append({**record, "topic": msg.topic})

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.found)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Fleet(WatchedFleet):
    inventory: list[str] = field(default_factory=list)
    anomalies: Optional[AnomalyListener] = None

    def deploy(self, *extra: str) -> PlaybookRun:
        return ansible_playbook(
            "site.yml", *self.inventory, "-e", f"device_count={DEVICES}",
            "-e", f"edge_agent_publish_interval={INTERVAL}",
            "-e", "fleet_telemetry_store=postgresql", "-e", f"fleet_fault_injection={FAULTS}",
            *extra,
        )  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_docker()
    port = free_port()
    directory = write_emulated_inventory(
        tmp_path_factory.mktemp("inventory") / "emulated",
        NAME,
        broker_tls_port=port,
        monitor=True,
    )
    inventory = ["-i", str(directory)]
    workdir = tmp_path_factory.mktemp("watch")
    fleet: Optional[Fleet] = None
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
        fleet.anomalies = AnomalyListener(port, fleet_cache(NAME) / "pki" / "ca.crt")
        yield fleet
    finally:
        if fleet is not None and fleet.anomalies is not None:
            fleet.anomalies.close()
        if fleet is not None:
            fleet.watch.kill()  # a failed test may have left its window's consumer running
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


def test_consumer_away_gets_everything_on_return(fleet: Fleet) -> None:
    fleet.open_window()
    first = fleet.watch.stop()
    fleet.check_window(first)
    before = {mac: record["seq_max"] for mac, record in first.devices.items()}
    time.sleep(CONSUMER_AWAY)  # the fault itself: the consumer is away this long
    returned = time.time()
    fleet.watch.start()
    fleet.wait_caught_up(returned)
    window = fleet.close_window(f"consumer away {CONSUMER_AWAY:g} s", time.time() - returned)
    for mac, record in window.devices.items():
        # The readings the broker held for the consumer meanwhile, at least most of them.
        assert record["seq_max"] - before[mac] >= CONSUMER_AWAY / INTERVAL * 0.8, fleet.names[mac]


def cut_network(container: str, seconds: float) -> float:
    """Disconnect `container` from the fleet network for `seconds`; returns when it started
    to come back: the moment before `docker network connect`, since an agent may reconnect
    before that command returns (it took seconds on a loaded machine, and the reconnection was
    then missed)."""
    docker("network", "disconnect", NAME, container)
    time.sleep(seconds)  # the fault itself: the host is cut off this long
    back = time.time()
    docker("network", "connect", NAME, container)
    return back


def test_network_cut_delivers_the_backlog(fleet: Fleet) -> None:
    target = device(5)
    fleet.open_window()
    reconnected = cut_network(target, NETWORK_CUT)
    assert wait_until(lambda: target in broker_log(BROKER, reconnected).connects, 120, POLL)
    back = reconnect_times(broker_log(BROKER, reconnected), [target], reconnected)[target]
    fleet.wait_caught_up(time.time())
    window = fleet.close_window(f"network cut {NETWORK_CUT:g} s", back)
    record = window.devices[fleet.ids[target]]
    assert record["agent_overflow"] == 0
    assert record["valid"] >= NETWORK_CUT / INTERVAL  # the backlog, delivered late but whole


def test_network_cut_beyond_the_queue_counts_every_lost_reading(fleet: Fleet) -> None:
    target = device(6)
    mac = fleet.ids[target]
    env, unit = env_path(target), agent_unit(target)
    # A small queue on one device, so that the cut overflows it.
    on(
        target,
        f"cp -a {env} /root/agent.env.bak"
        f" && sed -i 's/^QUEUE_SIZE=.*/QUEUE_SIZE={QUEUE_SIZE_SMALL}/' {env}",
    )
    on(target, f"systemctl restart {unit}")
    try:
        fleet.open_window()
        overflow_before = fleet.watch.snapshot()[mac].overflow
        reconnected = cut_network(target, OVERFLOW_CUT)
        assert wait_until(lambda: target in broker_log(BROKER, reconnected).connects, 120, POLL)
        back = reconnect_times(broker_log(BROKER, reconnected), [target], reconnected)[target]
        fleet.wait_caught_up(time.time())
        dropped = fleet.watch.snapshot()[mac].overflow - overflow_before
        assert dropped > 0, "the cut did not overflow the queue"
        # The readings missing at the consumer must be exactly the ones the agent reported.
        fleet.dropped[mac] = fleet.dropped.get(mac, 0) + dropped
        fleet.close_window(f"network cut {OVERFLOW_CUT:g} s, queue overflow", back)
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
    # ...and each runs with the new setting.
    intervals = {name: device_env(name, name)["PUBLISH_INTERVAL"] for name in fleet.ids}
    assert intervals == dict.fromkeys(fleet.ids, "0.4"), intervals
    log = broker_log(BROKER, started)
    counts = {user: len(log.connects.get(user, [])) for user in fleet.ids}
    assert counts == dict.fromkeys(fleet.ids, 1), counts
    fleet.wait_caught_up(time.time())
    # Recovery: the longest time any one agent was away from the broker for its restart.
    fleet.close_window("redeploy under load", max(log.downtime(user) for user in fleet.ids))


def judged_episodes(ids: list[str], newest: dict[str, int]) -> list[tuple[str, faults.Episode]]:
    """The injected episodes the anomaly check can judge, given each device's newest seq."""
    spec = faults.parse_spec(FAULTS)
    judged = []
    for mac in ids:
        last = newest.get(mac, 0) - JUDGE_MARGIN
        judged += [(mac, e) for e in faults.schedule(spec, mac, 0, max(last, 0)) if e.end <= last]
    return judged


def psql(sql: str) -> list[list[str]]:
    """Rows of a query in the monitor's telemetry database, as its postgres superuser."""
    out = on(MONITOR, f"runuser -u postgres -- psql -d edge_telemetry -XAtF '|' -c \"{sql}\"")
    return [line.split("|") for line in out.splitlines() if line]


def stored_seqs() -> dict[str, dict[int, set[int]]]:
    """device ID -> epoch -> the seqs stored."""
    stored: dict[str, dict[int, set[int]]] = {}
    for device_id, epoch, seq in psql("SELECT device_id, epoch, seq FROM telemetry"):
        stored.setdefault(device_id, {}).setdefault(int(epoch), set()).add(int(seq))
    return stored


def stored_rows() -> int:
    try:
        return int(psql("SELECT count(*) FROM telemetry")[0][0])
    except Exception:  # PostgreSQL is down or restarting
        return -1


def consumer_restarts() -> int:
    return int(on(MONITOR, "systemctl show -p NRestarts --value edge-consumer").strip())


def test_monitor_consumer_and_postgresql_killed_mid_flood_store_every_reading_once(
    fleet: Fleet,
) -> None:
    fleet.open_window()
    restarts = consumer_restarts()
    before = stored_rows()
    on(MONITOR, "systemctl kill --signal=SIGKILL edge-consumer")
    assert wait_until(lambda: consumer_restarts() == restarts + 1, 30, POLL)
    assert wait_until(lambda: stored_rows() > before + 10 * DEVICES, 60, POLL)
    before = stored_rows()
    on(MONITOR, "systemctl kill --signal=SIGKILL postgresql@15-main")
    time.sleep(5)  # the consumer holds its batch unacknowledged and retries
    on(MONITOR, "systemctl start postgresql@15-main")
    assert wait_until(lambda: stored_rows() > before + 10 * DEVICES, 90, POLL)
    # The agents inject faults on a fixed schedule; run until there are enough episodes for
    # the anomaly check to judge (at least one per device), however fast the earlier tests were.
    macs = list(fleet.ids.values())
    await_condition(
        lambda: len(judged_episodes(macs, fleet.watch.newest_seqs())) >= DEVICES,
        600,
        f"the fleet never produced {DEVICES} injected episodes to judge",
        interval=2.0,
    )
    # Stop every agent so that the store can catch up with a fixed end.
    stopping = time.time()
    for n in range(1, DEVICES + 1):
        on(device(n), f"systemctl stop {agent_unit(device(n))}")
    stopped = time.time()
    fleet.wait_caught_up(stopping - 5 * INTERVAL)
    fleet.close_window("monitor consumer and PostgreSQL SIGKILL", 0.0)
    journal = on(MONITOR, f"journalctl -u edge-consumer --since @{int(stopped) - 600} -o cat")
    assert "telemetry store unavailable" in journal, journal[-2000:]

    def caught_up() -> bool:
        stored = stored_seqs()
        return all(
            max(max(seqs) for seqs in stored.get(mac, {0: {-1}}).values())
            >= fleet.ledger.runs[mac][-1][1]
            for mac in fleet.ids.values()
        )

    assert wait_until(caught_up, 60, 1.0), "the store never caught up with the last readings"
    stored = stored_seqs()
    problems = []
    for mac in fleet.ids.values():
        epochs = stored[mac]
        assert len(epochs) == 1, f"{fleet.names[mac]}: epochs {sorted(epochs)}: state was lost"
        (seqs,) = epochs.values()
        first, last = min(seqs), max(seqs)
        # The monitor subscribed before the agents started: from seq 0 on, every reading the
        # watch saw is stored, and the only holes are those the watch has too (agent overflow).
        store_holes = set(range(first, last + 1)) - seqs
        watch_holes = {s for a, b in fleet.ledger.holes(mac) for s in range(a, b + 1)}
        unseen = {s for a, b in fleet.ledger.runs[mac] for s in range(a, b + 1)} - seqs
        if first != 0 or not store_holes <= watch_holes or unseen:
            problems.append(
                f"{fleet.names[mac]}: first {first}, holes {sorted(store_holes)[:10]} (watch"
                f" {sorted(watch_holes)[:10]}), seen but not stored {sorted(unseen)[:10]}"
            )
    assert not problems, "\n".join(problems)
    keys = psql("SELECT count(*), count(DISTINCT (device_id, epoch, seq)) FROM telemetry")[0]
    assert keys[0] == keys[1], f"rows {keys[0]}, distinct readings {keys[1]}"


def test_injected_faults_are_flagged_on_iot_anomaly_and_stored(fleet: Fleet) -> None:
    assert fleet.anomalies is not None
    published = fleet.anomalies.snapshot()
    assert {p["topic"] for p in published} <= {f"{ANOMALY_PREFIX}/{m}" for m in fleet.ids.values()}
    stored = {
        (device_id, kind, int(seq))
        for device_id, kind, seq in psql("SELECT device_id, kind, seq FROM anomalies")
    }
    flagged = {(p["device_id"], p["kind"], p["seq"]) for p in published}
    last = {mac: max(max(s) for s in e.values()) for mac, e in stored_seqs().items()}
    judged = judged_episodes(list(fleet.ids.values()), last)
    episodes, detected = len(judged), 0
    for mac, episode in judged:
        window = range(episode.start, episode.end + 4)  # the detectors' allowed delay
        hits = {a for a in flagged if a[0] == mac and a[1] == episode.kind and a[2] in window}
        detected += bool(hits)
        assert hits <= stored, f"{fleet.names[mac]}: published but not stored: {hits - stored}"
    # The kill test ran the fleet until this many could be judged.
    assert episodes >= DEVICES, f"only {episodes} episodes: the run was too short to judge"
    assert detected >= 0.8 * episodes, f"{detected} of {episodes} injected episodes flagged"
