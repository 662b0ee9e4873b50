"""Several devices per host: 12 devices packed 4 per host on 3 emulated hosts, end to end.

site.yml deploys the packed fleet (`-e devices_per_host=4`) with its monitor and verifies
every device through the consumer; the monitor's dashboard and Prometheus see every device;
a rerun changes nothing; devices that share a host are isolated from each other
(their own Unix users, unreadable secrets, MQTT topics of their own); killing one agent touches
no other device on its host and loses no reading; scaling down to 7 removes exactly devices
8-12 and the host they leave empty; teardown leaves nothing.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
from support.fleet import (
    SERVICE_SECRETS,
    MqttClient,
    PlaybookRun,
    active_agents,
    agent_reports,
    agent_restarts,
    agent_unit,
    ansible_playbook,
    as_agent_of,
    device_env,
    docker,
    env_path,
    fleet_cache,
    fleet_containers,
    fleet_layout,
    fleet_passwords,
    on,
    private_state_path,
    require_docker,
    slice_path,
    state_path,
    unit_show,
    write_emulated_inventory,
)
from support.polling import wait_until
from support.ports import free_port
from support.watch import POLL, FleetWatch, WatchedFleet, broker_log

pytestmark = pytest.mark.fleet

# Device names (<NAME>-pi-0001) also name the agents' Unix users: at most 20 characters.
NAME = "edge-pack"
BROKER = f"{NAME}-broker"
MONITOR = f"{NAME}-monitor"
DEVICES = 12
PER_HOST = 4
SMALLER = 7
INTERVAL = 1.0  # s between readings


def device(n: int) -> str:
    return f"{NAME}-pi-{n:04d}"


def host(n: int) -> str:
    return f"{NAME}-pi-host-{n:04d}"


# Devices in order, PER_HOST to a host: host 1 runs devices 1-4, host 2 5-8, host 3 9-12.
EXPECTED = {host(h): [device(n) for n in range(h * 4 - 3, h * 4 + 1)] for h in (1, 2, 3)}


@dataclass
class PackedFleet(WatchedFleet):
    inventory: list[str] = field(default_factory=list)
    port: int = 0  # the broker's TLS port on the controller's loopback
    dashboard_port: int = 0  # the monitor's dashboard and /metrics, and its Prometheus
    prometheus_port: int = 0
    ca: Path = Path()
    deployed: Optional[PlaybookRun] = None
    layout: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def site(self, count: int = DEVICES, *extra: str) -> PlaybookRun:
        return ansible_playbook(
            "site.yml", *self.inventory, "-e", f"device_count={count}",
            "-e", f"devices_per_host={PER_HOST}", "-e", f"edge_agent_publish_interval={INTERVAL}",
            *extra,
        )  # fmt: skip

    def host_of(self, name: str) -> str:
        return next(h for h, devices in self.layout.items() if name in [d["name"] for d in devices])

    def client(self, user: str, password: Optional[str] = None) -> MqttClient:
        password = password if password is not None else fleet_passwords(NAME)[user]
        return MqttClient(self.port, self.ca, user, password)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackedFleet]:
    require_docker()
    port, dashboard_port, prometheus_port = free_port(), free_port(), free_port()
    directory = write_emulated_inventory(
        tmp_path_factory.mktemp("inventory") / "emulated",
        NAME,
        broker_tls_port=port,
        monitor=True,
        dashboard_port=dashboard_port,
        prometheus_port=prometheus_port,
    )
    inventory = ["-i", str(directory)]
    workdir = tmp_path_factory.mktemp("watch")
    ca = fleet_cache(NAME) / "pki" / "ca.crt"
    fleet = PackedFleet(
        FleetWatch(port, ca, Path(), workdir),
        {},
        inventory=inventory,
        port=port,
        dashboard_port=dashboard_port,
        prometheus_port=prometheus_port,
        ca=ca,
    )
    try:
        fleet.deployed = fleet.site()
        assert fleet.deployed.rc == 0, fleet.deployed.failures()
        fleet.layout = fleet_layout(
            inventory, "-e", f"device_count={DEVICES}", "-e", f"devices_per_host={PER_HOST}"
        )
        fleet.set_ids({d["name"]: d["device_id"] for ds in fleet.layout.values() for d in ds})
        password_file = workdir / "consumer.password"
        password_file.touch(mode=0o600)
        password_file.write_text(fleet_passwords(NAME)["consumer"] + "\n")
        fleet.watch.password_file = password_file
        yield fleet
    finally:
        ansible_playbook("playbooks/teardown.yml", *inventory)


def listen(fleet: PackedFleet, topics: list[str], seconds: float) -> list[tuple[str, bytes]]:
    """What the consumer receives on `topics` within `seconds`."""
    consumer = fleet.client("consumer")
    assert consumer.accepted, consumer.error or consumer.connack
    for topic in topics:
        consumer.client.subscribe(topic, qos=1)
    time.sleep(seconds)
    consumer.close()
    return consumer.received


def test_packed_deploy_ends_with_every_device_verified(fleet: PackedFleet) -> None:
    run = fleet.deployed
    assert run is not None
    assert f"fleet check met: {DEVICES} of {DEVICES}" in run.output
    assert {h: [d["name"] for d in ds] for h, ds in fleet.layout.items()} == EXPECTED
    assert fleet_containers(NAME) == sorted([BROKER, MONITOR, *EXPECTED])
    assert set(run.recap()) == {"localhost", BROKER, MONITOR, *EXPECTED}
    # First install: every host started all its agents, in the one bundle task.
    reports = agent_reports(run.output)
    assert {h: (r.restarted, r.agents) for h, r in reports.items()} == dict.fromkeys(
        EXPECTED, (PER_HOST, PER_HOST)
    ), reports
    for name, devices in EXPECTED.items():
        assert active_agents(name) == devices, name
        slices = on(name, "sha256sum " + " ".join(slice_path(d) for d in devices)).split()[::2]
        assert len(set(slices)) == PER_HOST, f"{name}: devices share a slice"
        for d in devices:
            env = device_env(name, d)
            assert (env["DEVICE_NAME"], env["MQTT_USERNAME"]) == (d, d), env
            assert env["DEVICE_ID"] == fleet.ids[d], env
            assert env["DATASET_PATH"] == slice_path(d) and env["STATE_DIR"] == state_path(d)
        # The single-agent layout of earlier releases is not there.
        legacy = (
            "/etc/systemd/system/edge-agent.service /etc/edge-agent/agent.env"
            " /opt/edge-agent/slice.csv"
        )
        assert on(name, f"for f in {legacy}; do [ -e $f ] && echo $f; done; true") == ""


def get_json(url: str, auth: Optional[tuple[str, str]] = None) -> Any:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def test_monitor_shows_every_device_online_and_prometheus_scrapes_it(fleet: PackedFleet) -> None:
    run = fleet.deployed
    assert run is not None
    dashboard = f"http://127.0.0.1:{fleet.dashboard_port}/"
    prometheus = f"http://127.0.0.1:{fleet.prometheus_port}/"
    assert f"Dashboard and /metrics: {dashboard}" in run.output
    assert f"Prometheus: {prometheus}" in run.output
    assert on(MONITOR, "systemctl is-active edge-consumer prometheus").split() == ["active"] * 2

    # Published beyond the monitor's loopback, so the dashboard asks for the generated login.
    with pytest.raises(urllib.error.HTTPError) as refused:
        get_json(dashboard + "api/devices")
    assert refused.value.code == 401
    login = ("dashboard", fleet_passwords(NAME)["dashboard"])
    listed = get_json(dashboard + "api/devices", login)["devices"]
    assert {d["id"] for d in listed if d["online"]} == set(fleet.ids.values()), listed
    assert {d["name"] for d in listed} == set(fleet.ids)

    def online_in_prometheus() -> float:
        query = urllib.parse.quote('edge_fleet_devices{state="online"}')
        result = get_json(f"{prometheus}api/v1/query?query={query}")["data"]["result"]
        return float(result[0]["value"][1]) if result else -1.0

    assert wait_until(lambda: online_in_prometheus() == DEVICES, 60), online_in_prometheus()
    rules = get_json(prometheus + "api/v1/rules")["data"]["groups"]
    alerts = {rule["name"] for group in rules for rule in group["rules"]}
    assert {"EdgeDeviceSilent", "EdgeDeviceGapsIncreasing", "EdgeBrokerUnreachable"} <= alerts


# Devices, rows and distinct keys in the monitor's SQLite store, read with its own Python.
STORED = (
    "import json, sqlite3; c = sqlite3.connect('file:/var/lib/edge-consumer/telemetry.db?mode=ro',"
    " uri=True); print(json.dumps(c.execute('SELECT count(DISTINCT device_id), count(*),"
    " count(DISTINCT device_id || epoch || seq) FROM telemetry').fetchone()))"
)


def test_monitor_stores_every_device_in_sqlite_by_default(fleet: PackedFleet) -> None:
    """The default store: a SQLite file in the service's StateDirectory, one row per reading."""
    assert on(MONITOR, "stat -c '%U %a' /var/lib/edge-consumer").split() == ["edge-consumer", "750"]

    def stored() -> list[int]:
        return list(json.loads(on(MONITOR, f'python3 -c "{STORED}"')))

    assert wait_until(lambda: stored()[0] == DEVICES, 60), stored()
    devices, rows, keys = stored()
    assert rows == keys and rows >= DEVICES, (devices, rows, keys)


def test_rerun_changes_nothing_on_any_host(fleet: PackedFleet) -> None:
    run = fleet.site()
    assert run.rc == 0, run.failures()
    assert set(run.recap()) == {"localhost", BROKER, MONITOR, *EXPECTED}
    assert {h: c["changed"] for h, c in run.recap().items()} == dict.fromkeys(run.recap(), 0)
    assert agent_reports(run.output) == {}  # the role reports only hosts it changed


def test_devices_sharing_a_host_run_as_different_users_and_cannot_read_each_other(
    fleet: PackedFleet,
) -> None:
    shared = host(1)
    devices = EXPECTED[shared]
    uids = {}
    for d in devices:
        unit = unit_show(shared, d, "User", "DynamicUser", "MainPID", "ActiveState")
        assert unit["User"] == f"edge-agent-{d}" and unit["DynamicUser"] == "yes", unit
        assert unit["ActiveState"] == "active", unit
        uids[d] = on(shared, f"stat -c %u /proc/{unit['MainPID']}").strip()
    assert len(set(uids.values())) == PER_HOST, f"agents share a Unix user: {uids}"
    assert "0" not in uids.values(), f"an agent runs as root: {uids}"
    files = " ".join(env_path(d) for d in devices)
    modes = on(shared, f"stat -c '%a %U %G' {files} /etc/edge-agent/devices").splitlines()
    assert modes == ["600 root root"] * PER_HOST + ["700 root root"], modes

    a, b = devices[0], devices[1]
    # Device A's agent identity reads the files meant for it (the twin that proves the check)...
    readable = as_agent_of(shared, a, f"head -c 2 {slice_path(a)} && head -c 2 {slice_path(b)}")
    assert readable.returncode == 0, readable.stderr
    # ...but not B's environment (B's password), B's state, or even its own environment file.
    for path in (env_path(b), f"{private_state_path(b)}/state.json", env_path(a)):
        denied = as_agent_of(shared, a, f"cat {path}")
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (path, denied)
    assert fleet_passwords(NAME)[b] in on(shared, f"cat {env_path(b)}")  # root, as systemd reads


def test_a_device_cannot_publish_to_a_neighbours_topic(fleet: PackedFleet) -> None:
    a, b = EXPECTED[host(1)][:2]
    assert fleet.host_of(a) == fleet.host_of(b)
    topic_a, topic_b = (f"iot/telemetry/{fleet.ids[d]}" for d in (a, b))
    consumer = fleet.client("consumer")
    assert consumer.accepted, consumer.error or consumer.connack
    consumer.client.subscribe(topic_a, qos=1)
    consumer.client.subscribe(topic_b, qos=1)
    time.sleep(1)
    forger = fleet.client(a)  # A's own credentials, from the credentials file
    assert forger.accepted, forger.error or forger.connack
    forged, own = (f"{kind}-{uuid.uuid4().hex}".encode() for kind in ("forged", "own"))
    forger.client.publish(topic_b, forged, qos=1).wait_for_publish(5)
    forger.client.publish(topic_a, own, qos=1).wait_for_publish(5)
    time.sleep(4 * INTERVAL)  # B publishes meanwhile, so the consumer hears B itself
    forger.close()
    consumer.close()
    on_b = [payload for topic, payload in consumer.received if topic == topic_b]
    on_a = [payload for topic, payload in consumer.received if topic == topic_a]
    assert any(json.loads(p).get("device_name") == b for p in on_b if p != forged), (
        "the consumer heard nothing from device B itself"
    )
    assert forged not in on_b, "device A published on device B's topic"
    assert own in on_a, "device A could not even publish on its own topic"


def test_killed_agent_restarts_alone_and_loses_nothing(fleet: PackedFleet) -> None:
    shared = host(1)
    target, *others = EXPECTED[shared]
    before = {d: unit_show(shared, d, "NRestarts", "MainPID") for d in EXPECTED[shared]}
    fleet.open_window()
    killed = time.time()
    on(shared, f"systemctl kill --signal=SIGKILL {agent_unit(target)}")
    restarted = int(before[target]["NRestarts"]) + 1
    assert wait_until(lambda: agent_restarts(shared, target) == restarted, 30, POLL)
    assert wait_until(lambda: target in broker_log(BROKER, killed).connects, 30, POLL)
    back = min(broker_log(BROKER, killed).connects[target]) - killed
    fleet.wait_caught_up(time.time())
    # Only the killed instance restarted: its neighbours kept their process and connection.
    for d in others:
        assert unit_show(shared, d, "NRestarts", "MainPID") == before[d], d
    reconnected = set(broker_log(BROKER, killed).connects)
    assert reconnected == {target}, f"devices that reconnected: {sorted(reconnected)}"
    assert agent_restarts(shared, target) == restarted
    # No reading of any of the 12 devices is missing at the consumer's persistent session.
    window = fleet.close_window("packed host: agent SIGKILL", back)
    assert window.devices[fleet.ids[target]]["gaps"] == 0


def test_scale_down_removes_exactly_the_removed_devices_and_the_empty_host(
    fleet: PackedFleet,
) -> None:
    kept = [device(n) for n in range(1, SMALLER + 1)]
    removed = [device(n) for n in range(SMALLER + 1, DEVICES + 1)]
    old_passwords = fleet_passwords(NAME)
    run = fleet.site(SMALLER)
    assert run.rc == 0, run.failures()
    assert f"fleet check met: {SMALLER} of {SMALLER}" in run.output

    # Host 3 ran only removed devices: its container is gone.
    assert fleet_containers(NAME) == sorted([BROKER, MONITOR, host(1), host(2)])
    assert set(run.recap()) == {"localhost", BROKER, MONITOR, host(1), host(2)}
    # The slicer cuts each sensor's readings into as many windows as it has devices, so the kept
    # devices get new slices and restart once with them (their seq ledgers stay); nothing else.
    reports = agent_reports(run.output)
    assert reports[host(2)].removed == [device(8)], reports
    assert host(1) not in reports or reports[host(1)].removed == [], reports
    assert all(r.restarted <= r.agents for r in reports.values()), reports

    # On host 2 device 8 is gone, instance, files and state; the kept devices still run.
    assert active_agents(host(1)) == kept[:4]
    assert active_agents(host(2)) == kept[4:]
    gone = unit_show(host(2), device(8), "ActiveState", "UnitFileState")
    assert gone == {"ActiveState": "inactive", "UnitFileState": "disabled"}, gone
    leftovers = on(
        host(2),
        f"for f in {env_path(device(8))} {slice_path(device(8))} {state_path(device(8))}"
        f" {private_state_path(device(8))} /etc/edge-agent/devices/{device(8)}"
        f" /etc/systemd/system/multi-user.target.wants/{agent_unit(device(8))};"
        " do [ -e $f ] || [ -L $f ] && echo $f; done; true",
    )
    assert leftovers.split() == [], leftovers
    assert device(8) not in on(host(2), "cat /etc/edge-agent/bundle.json")
    for d in kept[4:]:
        on(host(2), f"test -s {env_path(d)} && test -s {slice_path(d)} && test -d {state_path(d)}")

    # Their MQTT users are revoked: gone from the credentials file and refused by the broker.
    assert sorted(fleet_passwords(NAME)) == sorted([*SERVICE_SECRETS, *kept])
    broker_users = on(BROKER, "cut -d: -f1 /etc/mosquitto/passwd").split()
    assert not set(removed) & set(broker_users), broker_users
    for d in (removed[0], removed[-1]):
        refused = fleet.client(d, old_passwords[d])
        refused.close()
        assert not refused.accepted, f"{d} still logs in"
    still = fleet.client(kept[-1], old_passwords[kept[-1]])
    still.close()
    assert still.accepted, still.error or still.connack

    # Exactly devices 1-7 publish.
    heard = listen(fleet, ["iot/telemetry/+"], 5 * INTERVAL)
    senders = {json.loads(payload)["device_name"] for _topic, payload in heard}
    assert senders == set(kept), sorted(senders)


def test_teardown_leaves_no_container_of_the_fleet(fleet: PackedFleet) -> None:
    run = ansible_playbook("playbooks/teardown.yml", *fleet.inventory)
    assert run.rc == 0, run.failures()
    assert fleet_containers(NAME) == []
    assert docker("network", "ls", "-q", "--filter", f"name=^{NAME}$").strip() == ""
