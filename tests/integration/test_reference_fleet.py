"""The reference fleet: one emulated fleet, deployed once, taken through ordered phases.

12 devices packed 4 per host on 3 hosts, with the monitor, TLS and authentication,
all deployed by the real `site.yml`. The phases run in this order, each a group of tests:

  deploy      from nothing to every device verified, the layout as planned
  monitor     dashboard login, every device online, Prometheus scraping, the SQLite store
  security    authentication, per-device ACLs on a shared host, TLS, unprivileged agents
  rerun       a second run changes nothing
  check       --check changes nothing
  linear      ansible-core's own linear strategy reruns with nothing to change
  agent_kill  a killed agent restarts alone and loses no reading
  mtls        switching on mutual TLS restarts every agent once, by request; clients need certs
  agent_config  bad agent settings stop the service with one message, never a crash loop
  disruptions a mosquitto restart, an edge-consumer restart, the monitor frozen for 20 s
  device_fault one agent frozen (SIGSTOP) for 30 s: a real fault
  alarms      after all of that, the monitor's store holds no device anomaly but the dataset's
              impossible values and the device_fault's one dropout, and each disruption
              raised at most one fleet-level silence
  scale_down  12 -> 7 removes exactly devices 8-12, their files, users and the emptied host
  teardown    nothing of the fleet is left

A phase that fails names itself (support.phases); the phases that need it are skipped, with
that reason. Faults under load have a fleet of their own (test_fleet_faults.py), and so does
the SSH path of a physical lab (test_ssh_deploy.py).
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
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
    agent_starts_since,
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
from support.polling import await_condition, wait_until
from support.ports import free_port
from support.watch import POLL, FleetWatch, WatchedFleet, broker_log

pytestmark = pytest.mark.fleet

# Device names (<NAME>-pi-0001) also name the agents' Unix users: at most 20 characters.
NAME = "edge-ref"
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


def planned(count: int) -> dict[str, list[str]]:
    """Host -> its devices: in order, PER_HOST to a host."""
    hosts: dict[str, list[str]] = {}
    for n in range(1, count + 1):
        hosts.setdefault(host((n - 1) // PER_HOST + 1), []).append(device(n))
    return hosts


EXPECTED = planned(DEVICES)  # host 1: devices 1-4, host 2: 5-8, host 3: 9-12
REMOVED_FROM_HOST_2 = device(SMALLER + 1)  # scale-down takes it off host 2, which stays


@dataclass
class ReferenceFleet(WatchedFleet):
    inventory: list[str] = field(default_factory=list)
    port: int = 0  # the broker's TLS port on the controller's loopback
    plain_port: int = 0  # the inventory's plaintext port: not published while TLS is on
    dashboard_port: int = 0
    prometheus_port: int = 0
    ca: Path = Path()
    settings: list[str] = field(default_factory=list)  # -e settings that later phases keep
    deployed: Optional[PlaybookRun] = None
    layout: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    disruptions: int = 0  # of the fleet's own infrastructure, each at most one fleet event

    def site(
        self, count: int = DEVICES, *extra: str, env: Optional[dict[str, str]] = None
    ) -> PlaybookRun:
        return ansible_playbook(
            "site.yml", *self.inventory, "-e", f"device_count={count}",
            "-e", f"devices_per_host={PER_HOST}", "-e", f"edge_agent_publish_interval={INTERVAL}",
            *self.settings, *extra, env=env,
        )  # fmt: skip

    def client(
        self,
        user: Optional[str],
        password: Optional[str] = None,
        **options: Any,
    ) -> MqttClient:
        """A client of the broker; a user's password comes from the credentials file."""
        if user is not None and password is None:
            password = fleet_passwords(NAME)[user]
        port = options.pop("port", self.port)
        ca = options.pop("ca", self.ca)
        return MqttClient(port, ca, user, password, **options)

    def publishers(self, expected: set[str], timeout: float = 10 * INTERVAL) -> set[str]:
        """The devices (names) the consumer hears on iot/telemetry/+ once it has heard every
        expected one and then one more interval, in which an unexpected one would speak too."""
        consumer = self.client("consumer", cert=self.consumer_cert())
        assert consumer.accepted, consumer.error or consumer.connack
        consumer.client.subscribe("iot/telemetry/+", qos=1)

        def names() -> set[str]:
            return {json.loads(p)["device_name"] for _t, p in list(consumer.received)}

        heard_all = wait_until(lambda: expected <= names(), timeout)
        if heard_all:
            subscribed = time.time()
            wait_until(lambda: heard_since(consumer, subscribed), 10 * INTERVAL)
        consumer.close()
        return names()

    def consumer_cert(self) -> Optional[tuple[Path, Path]]:
        """The consumer's client certificate once mutual TLS is on (phase mtls)."""
        if "fleet_mqtt_mtls=true" not in self.settings:
            return None
        clients = self.ca.parent / "clients"
        return clients / "consumer.crt", clients / "consumer.key"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceFleet]:
    require_docker()
    ports = {option: free_port() for option in ("tls", "plain", "dashboard", "prometheus")}
    directory = write_emulated_inventory(
        tmp_path_factory.mktemp("inventory") / "emulated",
        NAME,
        broker_tls_port=ports["tls"],
        broker_plaintext_port=ports["plain"],
        monitor=True,
        dashboard_port=ports["dashboard"],
        prometheus_port=ports["prometheus"],
    )
    inventory = ["-i", str(directory)]
    workdir = tmp_path_factory.mktemp("watch")
    ca = fleet_cache(NAME) / "pki" / "ca.crt"
    fleet = ReferenceFleet(
        FleetWatch(ports["tls"], ca, workdir / "consumer.password", workdir),
        {},
        inventory=inventory,
        port=ports["tls"],
        plain_port=ports["plain"],
        dashboard_port=ports["dashboard"],
        prometheus_port=ports["prometheus"],
        ca=ca,
    )
    try:
        yield fleet
    finally:
        fleet.watch.kill()  # a failed test may have left its window's consumer running
        ansible_playbook("playbooks/teardown.yml", *inventory)


# --- deploy -----------------------------------------------------------------------------------


@pytest.mark.phase("deploy")
def test_deploy_from_nothing_ends_with_every_device_verified(fleet: ReferenceFleet) -> None:
    run = fleet.deployed = fleet.site(DEVICES, "-v")  # -v: passwords must stay out even so
    assert run.rc == 0, run.failures()
    assert f"fleet check met: {DEVICES} of {DEVICES}" in run.output
    fleet.layout = fleet_layout(
        fleet.inventory, "-e", f"device_count={DEVICES}", "-e", f"devices_per_host={PER_HOST}"
    )
    fleet.set_ids({d["name"]: d["device_id"] for ds in fleet.layout.values() for d in ds})
    fleet.watch.password_file.touch(mode=0o600)
    fleet.watch.password_file.write_text(fleet_passwords(NAME)["consumer"] + "\n")

    assert {h: [d["name"] for d in ds] for h, ds in fleet.layout.items()} == EXPECTED
    assert fleet_containers(NAME) == sorted([BROKER, MONITOR, *EXPECTED])
    assert set(run.recap()) == {"localhost", BROKER, MONITOR, *EXPECTED}
    # First install: every host started all its agents, in the one bundle task.
    reports = agent_reports(run.output)
    assert {h: (r.restarted, r.agents) for h, r in reports.items()} == {
        h: (len(ds), len(ds)) for h, ds in EXPECTED.items()
    }, reports


@pytest.mark.phase("deploy")
def test_each_device_runs_its_own_enabled_instance_with_its_own_slice(
    fleet: ReferenceFleet,
) -> None:
    for name, devices in EXPECTED.items():
        assert active_agents(name) == devices, name
        slices = on(name, "sha256sum " + " ".join(slice_path(d) for d in devices)).split()[::2]
        assert len(set(slices)) == len(devices), f"{name}: devices share a slice"
        enabled = on(name, "systemctl is-enabled " + " ".join(agent_unit(d) for d in devices))
        assert enabled.split() == ["enabled"] * len(devices), (name, enabled)
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


# --- monitor ----------------------------------------------------------------------------------


def get_json(url: str, auth: Optional[tuple[str, str]] = None) -> Any:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.phase("monitor", needs=("deploy",))
def test_monitor_shows_every_device_online_and_prometheus_scrapes_it(
    fleet: ReferenceFleet,
) -> None:
    assert fleet.deployed is not None
    dashboard = f"http://127.0.0.1:{fleet.dashboard_port}/"
    prometheus = f"http://127.0.0.1:{fleet.prometheus_port}/"
    assert f"Dashboard and /metrics: {dashboard}" in fleet.deployed.output
    assert f"Prometheus: {prometheus}" in fleet.deployed.output
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


@pytest.mark.phase("monitor", needs=("deploy",))
def test_monitor_stores_every_device_in_sqlite_by_default(fleet: ReferenceFleet) -> None:
    """The default store: a SQLite file in the service's StateDirectory, one row per reading."""
    assert on(MONITOR, "stat -c '%U %a' /var/lib/edge-consumer").split() == ["edge-consumer", "750"]

    def stored() -> list[int]:
        return list(json.loads(on(MONITOR, f'python3 -c "{STORED}"')))

    assert wait_until(lambda: stored()[0] == DEVICES, 60), stored()
    devices, rows, keys = stored()
    assert rows == keys and rows >= DEVICES, (devices, rows, keys)


# --- security ---------------------------------------------------------------------------------


@pytest.mark.phase("security", needs=("deploy",))
def test_the_consumer_hears_every_device(fleet: ReferenceFleet) -> None:
    assert fleet.publishers(set(fleet.ids)) == set(fleet.ids)


@pytest.mark.phase("security", needs=("deploy",))
def test_anonymous_and_wrong_password_connects_are_refused(fleet: ReferenceFleet) -> None:
    anonymous = fleet.client(None)
    anonymous.close()
    assert not anonymous.accepted
    assert anonymous.connack is None or "authori" in str(anonymous.connack).lower()
    wrong = fleet.client("consumer", "not-the-password")
    wrong.close()
    assert not wrong.accepted
    right = fleet.client("consumer")  # the twin: the same client with the right password
    right.close()
    assert right.accepted, right.error or right.connack


@pytest.mark.phase("security", needs=("deploy",))
def test_a_device_cannot_publish_to_a_neighbours_topic(fleet: ReferenceFleet) -> None:
    a, b = EXPECTED[host(1)][:2]  # two devices on one host
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

    def heard_b_itself() -> bool:
        return any(
            topic == topic_b and payload != forged and json.loads(payload)["device_name"] == b
            for topic, payload in list(consumer.received)
        )

    # B publishes meanwhile; once the consumer hears B itself, a forged message would be in.
    await_condition(
        lambda: heard_b_itself() and own in [p for _t, p in consumer.received],
        10 * INTERVAL,
        "the consumer heard neither device B itself nor device A on its own topic",
    )
    forger.close()
    consumer.close()
    assert forged not in [p for t, p in consumer.received if t == topic_b], "A published as B"


def heard_since(client: MqttClient, since: float) -> bool:
    """The client has received a reading produced after `since` (plus one interval).

    Mosquitto delivers in order what it routes, so by then anything published before it, forged
    or not, has arrived too.
    """
    for topic, payload in list(client.received):
        try:
            reading = json.loads(payload) if topic.startswith("iot/telemetry/") else {}
        except ValueError:
            continue  # not a reading (a forged marker, say)
        if isinstance(reading, dict) and reading.get("ts", 0) > since + INTERVAL:
            return True
    return False


@pytest.mark.phase("security", needs=("deploy",))
def test_a_device_subscribing_to_everything_receives_nothing(fleet: ReferenceFleet) -> None:
    spy = fleet.client(device(1))
    spy.client.subscribe("iot/#", qos=1)
    admin = fleet.client("admin")  # the twin: a user allowed to read iot/# hears the fleet
    admin.client.subscribe("iot/#", qos=1)
    subscribed = time.time()
    await_condition(
        lambda: heard_since(admin, subscribed), 10 * INTERVAL, "the admin heard nothing"
    )
    spy.close()
    admin.close()
    assert spy.accepted and admin.accepted
    assert spy.received == []


@pytest.mark.phase("security", needs=("deploy",))
def test_the_consumer_cannot_publish(fleet: ReferenceFleet) -> None:
    admin = fleet.client("admin")
    admin.client.subscribe("iot/telemetry/+", qos=1)
    consumer = fleet.client("consumer")
    marker = f"consumer-{uuid.uuid4().hex}".encode()
    consumer.client.publish("iot/telemetry/ff:ff:ff:ff:ff:ff", marker, qos=1).wait_for_publish(5)
    sent = time.time()
    await_condition(
        lambda: heard_since(admin, sent), 10 * INTERVAL, "the admin heard no later reading"
    )
    consumer.close()
    admin.close()
    assert marker not in [payload for _topic, payload in admin.received]


@pytest.mark.phase("security", needs=("deploy",))
def test_tls_with_another_ca_or_another_host_name_is_refused(
    fleet: ReferenceFleet, tmp_path: Path
) -> None:
    other_ca = tmp_path / "other-ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp_path / "k.pem"), "-out", str(other_ca), "-days", "1",
         "-subj", "/CN=not the fleet CA"],
        check=True, capture_output=True,
    )  # fmt: skip
    stranger = fleet.client("consumer", ca=other_ca)
    stranger.close()
    assert isinstance(stranger.error, ssl.SSLCertVerificationError), stranger.error
    # The broker's address on the fleet network is not among the names its certificate carries.
    broker_ip = docker(
        "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", BROKER
    ).strip()
    direct = fleet.client("consumer", host=broker_ip, port=8883)
    direct.close()
    assert isinstance(direct.error, ssl.SSLCertVerificationError), direct.error
    assert "match" in str(direct.error)
    # Plaintext: only the TLS port is published, and plaintext listens on the broker's loopback.
    published = docker("port", BROKER).split()
    assert published == ["8883/tcp", "->", f"127.0.0.1:{fleet.port}"], published
    plain = fleet.client("consumer", host=broker_ip, port=1883, tls=False)
    plain.close()
    assert not plain.accepted, f"plaintext MQTT accepted on {broker_ip}:1883"


@pytest.mark.phase("security", needs=("deploy",))
def test_credentials_stay_out_of_ansible_output_and_journals(fleet: ReferenceFleet) -> None:
    assert fleet.deployed is not None
    journals = "".join(
        docker("exec", name, "journalctl", "--no-pager", "-o", "cat")
        for name in [BROKER, MONITOR, *EXPECTED]
    )
    passwords = fleet_passwords(NAME)
    env_file = device_env(host(1), device(1))
    assert env_file["MQTT_PASSWORD"] == passwords[device(1)]  # the check can find one
    for user, password in passwords.items():
        assert password not in fleet.deployed.output, f"{user}'s password in ansible-playbook -v"
        assert password not in journals, f"{user}'s password in a journal"


@pytest.mark.phase("security", needs=("deploy",))
def test_devices_sharing_a_host_run_as_different_users_and_cannot_read_each_other(
    fleet: ReferenceFleet,
) -> None:
    shared = host(1)
    devices = EXPECTED[shared]
    uids = {}
    for d in devices:
        unit = unit_show(shared, d, "User", "DynamicUser", "MainPID", "ActiveState")
        assert unit["User"] == f"edge-agent-{d}" and unit["DynamicUser"] == "yes", unit
        assert unit["ActiveState"] == "active", unit
        uids[d] = on(shared, f"stat -c %u /proc/{unit['MainPID']}").strip()
    assert len(set(uids.values())) == len(devices), f"agents share a Unix user: {uids}"
    assert "0" not in uids.values(), f"an agent runs as root: {uids}"
    files = " ".join(env_path(d) for d in devices)
    modes = on(shared, f"stat -c '%a %U %G' {files} /etc/edge-agent/devices").splitlines()
    assert modes == ["600 root root"] * len(devices) + ["700 root root"], modes

    a, b = devices[0], devices[1]
    # Device A's agent identity reads the files meant for it (the twin that proves the check)...
    readable = as_agent_of(
        shared, a, f"head -c 2 {slice_path(a)} && head -c 2 /opt/edge-agent/edge-agent.pyz"
    )
    assert readable.returncode == 0, readable.stderr
    # ...but not B's environment (B's password), B's state, or even its own environment file.
    for path in (env_path(b), f"{private_state_path(b)}/state.json", env_path(a)):
        denied = as_agent_of(shared, a, f"cat {path}")
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (path, denied)
    assert fleet_passwords(NAME)[b] in on(shared, f"cat {env_path(b)}")  # root, as systemd reads


# --- rerun, check mode, linear strategy -------------------------------------------------------


@pytest.mark.phase("rerun", needs=("deploy",))
def test_rerun_changes_nothing_on_any_host(fleet: ReferenceFleet) -> None:
    run = fleet.site()
    assert run.rc == 0, run.failures()
    assert set(run.recap()) == {"localhost", BROKER, MONITOR, *EXPECTED}
    assert {h: c["changed"] for h, c in run.recap().items()} == dict.fromkeys(run.recap(), 0)
    assert agent_reports(run.output) == {}  # the role reports only hosts it changed


@pytest.mark.phase("check", needs=("deploy",))
def test_check_mode_runs_clean_against_the_fleet(fleet: ReferenceFleet) -> None:
    run = fleet.site(DEVICES, "--check")
    assert run.rc == 0, run.failures()
    assert run.total("changed") == 0, run.recap()


@pytest.mark.phase("linear", needs=("deploy",))
def test_the_stock_linear_strategy_reruns_with_nothing_to_change(fleet: ReferenceFleet) -> None:
    """ansible-core has deprecated third-party strategy plugins (Mitogen's); when it drops them,
    ANSIBLE_STRATEGY=linear must still run the fleet's plays."""
    run = fleet.site(env={"ANSIBLE_STRATEGY": "linear"})
    assert run.rc == 0, run.failures()
    assert "fleet check met" in run.output
    assert run.total("changed") == 0, run.recap()


# --- a killed agent ---------------------------------------------------------------------------


@pytest.mark.phase("agent_kill", needs=("deploy",))
def test_killed_agent_restarts_alone_and_loses_nothing(fleet: ReferenceFleet) -> None:
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
    # No reading of any device is missing at the consumer's persistent session.
    window = fleet.close_window("reference: agent SIGKILL", back)
    assert window.devices[fleet.ids[target]]["gaps"] == 0


# --- a changed setting: mutual TLS, a rolling restart -----------------------------------------


@pytest.mark.phase("mtls", needs=("deploy",))
def test_switching_on_mutual_tls_restarts_each_agent_once_by_request(
    fleet: ReferenceFleet,
) -> None:
    before = {d: unit_show(h, d, "InvocationID") for h, ds in EXPECTED.items() for d in ds}
    started = time.time()
    fleet.settings = ["-e", "fleet_mqtt_mtls=true"]
    fleet.disruptions += 1  # mosquitto restarts with its new listener
    run = fleet.site()
    assert run.rc == 0, run.failures()
    assert f"fleet check met: {DEVICES} of {DEVICES}" in run.output
    # The role's own account: on every host, all its agents restarted and nothing removed.
    reports = {h: (r.restarted, r.agents, r.removed) for h, r in agent_reports(run.output).items()}
    assert reports == {h: (len(ds), len(ds), []) for h, ds in EXPECTED.items()}, reports
    for h, devices in EXPECTED.items():
        for d in devices:
            # systemd's account: started exactly once since the run began, by request.
            assert agent_starts_since(h, d, started) == 1, d
            after = unit_show(h, d, "InvocationID", "NRestarts", "ActiveState")
            assert after["InvocationID"] != before[d]["InvocationID"], d
            # A requested restart resets systemd's count: 0 means no crash restart since.
            assert after["NRestarts"] == "0", d
            assert after["ActiveState"] == "active", d


@pytest.mark.phase("mtls", needs=("mtls",))
def test_mutual_tls_needs_a_client_certificate_from_the_fleet_ca(fleet: ReferenceFleet) -> None:
    with_cert = fleet.client("consumer", cert=fleet.consumer_cert())
    with_cert.close()
    assert with_cert.accepted, with_cert.error or with_cert.connack
    without_cert = fleet.client("consumer")
    without_cert.close()
    assert not without_cert.accepted
    # The device's key is root's; the unit copies it for the instance alone (ExecStartPre=+).
    shared, d = host(1), device(1)
    key = f"/etc/edge-agent/devices/{d}/client.key"
    assert on(shared, f"stat -c '%a %U' {key}").split() == ["600", "root"]
    env = device_env(shared, d)
    assert env["MQTT_TLS_CERT"] == f"/run/edge-agent/{d}/client.crt", env
    assert env["MQTT_TLS_KEY"] == f"/run/edge-agent/{d}/client.key", env
    # The copy in the instance's runtime directory is its dynamic user's, read-only.
    copy = on(shared, f"stat -c '%a %u' {env['MQTT_TLS_KEY']}").split()
    pid = unit_show(shared, d, "MainPID")["MainPID"]
    agent_uid = on(shared, f"stat -c %u /proc/{pid}").strip()
    assert copy == ["400", agent_uid] and agent_uid != "0", (copy, agent_uid)
    denied = as_agent_of(shared, d, f"cat {key}")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    handed = as_agent_of(shared, d, f"head -c 27 {env['MQTT_TLS_KEY']}")
    assert handed.returncode == 0 and handed.stdout.startswith("-----BEGIN"), handed
    # Every device still publishes, now with its certificate.
    assert fleet.publishers(set(fleet.ids)) == set(fleet.ids)


# --- bad agent settings -----------------------------------------------------------------------

CONFIG_HOST, CONFIG_DEVICE = host(1), device(1)
BAD_AGENT_CONFIG = {
    # name: (shell command run on the host, text the journal must show)
    "bad-port": (
        f"sed -i 's/^MQTT_PORT=.*/MQTT_PORT=99999/' {env_path(CONFIG_DEVICE)}",
        "MQTT_PORT",
    ),
    "bad-qos": (f"sed -i 's/^QOS=.*/QOS=7/' {env_path(CONFIG_DEVICE)}", "QOS"),
    "missing-slice": (
        f"mv {slice_path(CONFIG_DEVICE)} {slice_path(CONFIG_DEVICE)}.away",
        slice_path(CONFIG_DEVICE).rsplit("/", 1)[1],
    ),
    "unreadable-state": (
        f"cd {state_path(CONFIG_DEVICE)} && chown root:root state.json && chmod 0600 state.json",
        "state.json",
    ),
}


@pytest.mark.phase("agent_config", needs=("deploy",))
@pytest.mark.parametrize("case", sorted(BAD_AGENT_CONFIG))
def test_agent_config_error_stops_the_service_without_a_crash_loop(
    fleet: ReferenceFleet, case: str
) -> None:
    command, named = BAD_AGENT_CONFIG[case]
    unit = agent_unit(CONFIG_DEVICE)

    def on_host(script: str) -> str:
        return on(CONFIG_HOST, script)

    def state() -> dict[str, str]:
        return unit_show(CONFIG_HOST, CONFIG_DEVICE, "ActiveState", "ExecMainStatus", "NRestarts")

    env, slice_csv = env_path(CONFIG_DEVICE), slice_path(CONFIG_DEVICE)
    private = private_state_path(CONFIG_DEVICE)
    backup = f"cp -a {env} /root/device.env.bak"
    restore = (
        f"cp -a /root/device.env.bak {env};"
        f" {{ [ ! -e {slice_csv}.away ] || mv {slice_csv}.away {slice_csv}; }};"
        # The state file belongs to the instance's dynamic user, who owns its directory.
        f" chown --reference={private} {private}/state.json;"
        f" systemctl reset-failed {unit}; systemctl restart {unit}"
    )
    # Stopped first: on SIGTERM the agent rewrites its state file, which would undo the damage.
    on_host(f"{backup} && systemctl stop {unit} && {command} && systemctl start {unit}")
    try:
        # A crash loop would sit in `activating (auto-restart)` with NRestarts climbing; a
        # configuration error exits 2, which the unit's RestartPreventExitStatus makes final.
        await_condition(lambda: state()["ActiveState"] == "failed", 30, f"{unit} never failed")
        journal = on_host(f"journalctl -u {unit} -n 20 --no-pager -o cat")
        assert state() == {"ActiveState": "failed", "ExecMainStatus": "2", "NRestarts": "0"}
        assert named in journal, journal
    finally:
        on_host(restore + "; true")
    await_condition(lambda: state()["ActiveState"] == "active", 30, f"{unit} did not come back")


# --- disruptions that are no device's fault ---------------------------------------------------


def consumer_up() -> bool:
    return on(MONITOR, "systemctl is-active edge-consumer || true").strip() == "active"


@pytest.mark.phase("disruptions", needs=("deploy",))
def test_the_fleet_rides_out_a_mosquitto_restart(fleet: ReferenceFleet) -> None:
    fleet.disruptions += 1
    on(BROKER, "systemctl restart mosquitto")
    assert fleet.publishers(set(fleet.ids), timeout=60) == set(fleet.ids)


@pytest.mark.phase("disruptions", needs=("deploy",))
def test_the_fleet_rides_out_an_edge_consumer_restart(fleet: ReferenceFleet) -> None:
    fleet.disruptions += 1
    on(MONITOR, "systemctl restart edge-consumer")
    await_condition(consumer_up, 30, "edge-consumer did not come back")
    assert fleet.publishers(set(fleet.ids)) == set(fleet.ids)


@pytest.mark.phase("disruptions", needs=("deploy",))
def test_the_fleet_rides_out_the_monitor_frozen_for_20s(fleet: ReferenceFleet) -> None:
    fleet.disruptions += 1
    docker("pause", MONITOR)
    try:
        time.sleep(20)  # the fault itself: the monitor host is frozen this long
    finally:
        docker("unpause", MONITOR)
    await_condition(consumer_up, 30, "edge-consumer did not answer after the pause")
    assert fleet.publishers(set(fleet.ids)) == set(fleet.ids)


# --- a real fault on one device ---------------------------------------------------------------

FROZEN_HOST, FROZEN = host(2), device(6)  # kept by the scale-down


@pytest.mark.phase("device_fault", needs=("deploy",))
def test_an_agent_frozen_for_30s_is_a_dropout(fleet: ReferenceFleet) -> None:
    pid = unit_show(FROZEN_HOST, FROZEN, "MainPID")["MainPID"]
    on(FROZEN_HOST, f"kill -STOP {pid}")
    try:
        time.sleep(30)  # the fault itself: the agent is frozen this long
    finally:
        on(FROZEN_HOST, f"kill -CONT {pid}")
    assert FROZEN in fleet.publishers({FROZEN}, timeout=60)


# --- alarms -----------------------------------------------------------------------------------

# Every anomaly the monitor stored: device, kind, sensor, detail.
STORED_ANOMALIES = (
    "import json, sqlite3; c = sqlite3.connect('file:/var/lib/edge-consumer/telemetry.db?mode=ro',"
    " uri=True); print(json.dumps(c.execute('SELECT device_id, kind, sensor, detail FROM"
    " anomalies').fetchall()))"
)


@pytest.mark.phase("alarms", needs=("deploy", "disruptions", "device_fault"))
def test_a_healthy_fleet_raised_no_alarm_but_the_real_fault(fleet: ReferenceFleet) -> None:
    """Deploy, reruns, a rolling restart, bad settings put right, a broker restart, a consumer
    restart and a frozen monitor: none is a device's anomaly. The dataset's own impossible
    readings are real; so is the frozen agent's one dropout, and the killed agent's restart
    (phase agent_kill) may show as one. Scale-down comes after this check: it revokes the
    removed devices at the broker before their agents stop, and they show as dropouts (README,
    Limits)."""
    names = {mac: name for name, mac in fleet.ids.items()}
    stored = json.loads(on(MONITOR, f'python3 -c "{STORED_ANOMALIES}"'))
    unexpected, dropouts = [], []
    for device_id, kind, sensor, detail in stored:
        name = names.get(device_id, device_id)
        if kind == "impossible":
            continue
        if kind == "dropout":
            dropouts.append(name)
            if name in (FROZEN, EXPECTED[host(1)][0]):
                continue
        unexpected.append(f"{name}: {kind} {sensor}: {detail}")
    assert not unexpected, "anomalies on a healthy fleet:\n" + "\n".join(unexpected)
    assert dropouts.count(FROZEN) == 1, f"the frozen agent's dropouts: {dropouts}"
    assert dropouts.count(EXPECTED[host(1)][0]) <= 1, dropouts
    journal = on(MONITOR, "journalctl -u edge-consumer -o cat --no-pager")
    events = [line for line in journal.splitlines() if "fleet-level silence" in line]
    assert len(events) <= fleet.disruptions, "\n".join(events)


# --- scale down -------------------------------------------------------------------------------


@pytest.mark.phase("scale_down", needs=("deploy",))
def test_scale_down_removes_exactly_the_removed_devices_and_the_empty_host(
    fleet: ReferenceFleet,
) -> None:
    kept = [device(n) for n in range(1, SMALLER + 1)]
    removed = [device(n) for n in range(SMALLER + 1, DEVICES + 1)]
    after = planned(SMALLER)  # host 1: devices 1-4, host 2: 5-7; host 3 is emptied
    old_passwords = fleet_passwords(NAME)
    gone = REMOVED_FROM_HOST_2
    run = fleet.site(SMALLER)
    assert run.rc == 0, run.failures()
    assert f"fleet check met: {SMALLER} of {SMALLER}" in run.output

    assert fleet_containers(NAME) == sorted([BROKER, MONITOR, *after])
    assert set(run.recap()) == {"localhost", BROKER, MONITOR, *after}
    # The slicer cuts each sensor's readings into as many windows as it has devices, so the kept
    # devices get new slices and restart once with them (their seq ledgers stay); nothing else.
    reports = agent_reports(run.output)
    assert reports[host(2)].removed == [gone], reports
    assert host(1) not in reports or reports[host(1)].removed == [], reports
    assert all(r.restarted <= r.agents for r in reports.values()), reports
    for h, devices in after.items():
        assert active_agents(h) == devices, h

    # On host 2 that device is gone: instance, files and state.
    unit = unit_show(host(2), gone, "ActiveState", "UnitFileState")
    assert unit == {"ActiveState": "inactive", "UnitFileState": "disabled"}, unit
    leftovers = on(
        host(2),
        f"for f in {env_path(gone)} {slice_path(gone)} {state_path(gone)}"
        f" {private_state_path(gone)} /etc/edge-agent/devices/{gone}"
        f" /etc/systemd/system/multi-user.target.wants/{agent_unit(gone)};"
        " do [ -e $f ] || [ -L $f ] && echo $f; done; true",
    )
    assert leftovers.split() == [], leftovers
    assert gone not in on(host(2), "cat /etc/edge-agent/bundle.json")
    for d in after[host(2)]:
        on(host(2), f"test -s {env_path(d)} && test -s {slice_path(d)} && test -d {state_path(d)}")

    # Their MQTT users are revoked: gone from the credentials file and refused by the broker.
    assert sorted(fleet_passwords(NAME)) == sorted([*SERVICE_SECRETS, *kept])
    broker_users = on(BROKER, "cut -d: -f1 /etc/mosquitto/passwd").split()
    assert not set(removed) & set(broker_users), broker_users
    cert = fleet.consumer_cert()  # with mutual TLS on, a certificate gets the client that far
    for d in (removed[0], removed[-1]):
        refused = fleet.client(d, old_passwords[d], cert=cert)
        refused.close()
        assert not refused.accepted, f"{d} still logs in"
    still = fleet.client(kept[-1], old_passwords[kept[-1]], cert=cert)
    still.close()
    assert still.accepted, still.error or still.connack

    # Exactly the kept devices publish.
    senders = fleet.publishers(set(kept))
    assert senders == set(kept), sorted(senders)


# --- teardown ---------------------------------------------------------------------------------


@pytest.mark.phase("teardown")
def test_teardown_leaves_no_container_or_network_of_the_fleet(fleet: ReferenceFleet) -> None:
    run = ansible_playbook("playbooks/teardown.yml", *fleet.inventory)
    assert run.rc == 0, run.failures()
    assert fleet_containers(NAME) == []
    assert docker("network", "ls", "-q", "--filter", f"name=^{NAME}$").strip() == ""
