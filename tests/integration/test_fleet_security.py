"""The deployed fleet is secure by default: authentication, per-device ACLs, TLS.

One emulated fleet of 2 devices deployed by site.yml; every check talks to its real broker
from the controller with paho-mqtt. Each check fails if its protection is removed, and its
positive twin proves that the client itself works.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
from support.fleet import (
    MqttClient,
    ansible_playbook,
    as_agent_of,
    device_env,
    docker,
    env_path,
    fleet_cache,
    fleet_passwords,
    require_docker,
    unit_show,
    write_emulated_inventory,
)
from support.ports import free_port

pytestmark = pytest.mark.fleet

NAME = "edge-sectest"
CACHE = fleet_cache(NAME)


@dataclass
class Fleet:
    port: int  # TLS, published on the controller's loopback
    plain_port: int  # the inventory's plaintext port: not published while TLS is on
    ca: Path
    passwords: dict[str, str]
    device_ids: dict[str, str]  # user -> device ID
    broker_ip: str
    deploy_output: str


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_docker()
    port, plain_port = free_port(), free_port()
    directory = write_emulated_inventory(
        tmp_path_factory.mktemp("inventory") / "emulated",
        NAME,
        broker_plaintext_port=plain_port,
        broker_tls_port=port,
        device_count=2,
    )
    args = ["-i", str(directory)]
    run = ansible_playbook("site.yml", "-v", *args)
    try:
        assert run.rc == 0, run.output[-3000:]
        ids = {
            f"{NAME}-pi-000{n}": docker(
                "exec", f"{NAME}-pi-000{n}", "cat", "/sys/class/net/eth0/address"
            ).strip()
            for n in (1, 2)
        }
        broker_ip = docker(
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            f"{NAME}-broker",
        ).strip()
        yield Fleet(
            port,
            plain_port,
            CACHE / "pki" / "ca.crt",
            fleet_passwords(NAME),
            ids,
            broker_ip,
            run.output,
        )
    finally:
        ansible_playbook("playbooks/teardown.yml", *args)


def Client(
    fleet: Fleet,
    user: Optional[str],
    password: Optional[str] = None,
    host: str = "127.0.0.1",
    port: Optional[int] = None,
    ca: Optional[Path] = None,
    tls: bool = True,
    cert: Optional[tuple[Path, Path]] = None,
) -> MqttClient:
    """A client of the fleet's broker; a user's password comes from the credentials file."""
    if user is not None and password is None:
        password = fleet.passwords[user]
    return MqttClient(port or fleet.port, ca or fleet.ca, user, password, host, tls, cert)


def test_the_consumer_and_the_devices_log_in(fleet: Fleet) -> None:
    consumer = Client(fleet, "consumer")
    consumer.client.subscribe("iot/telemetry/+", qos=1)
    time.sleep(6)
    consumer.close()
    assert consumer.accepted
    heard = {json.loads(payload)["device_id"] for _topic, payload in consumer.received}
    assert heard == set(fleet.device_ids.values())


def test_anonymous_connect_is_refused(fleet: Fleet) -> None:
    anonymous = Client(fleet, None)
    anonymous.close()
    assert not anonymous.accepted
    assert anonymous.connack is None or "authori" in str(anonymous.connack).lower()


def test_a_wrong_password_is_refused(fleet: Fleet) -> None:
    wrong = Client(fleet, "consumer", "not-the-password")
    wrong.close()
    assert not wrong.accepted


def test_device_a_cannot_publish_as_device_b(fleet: Fleet) -> None:
    device_a, device_b = sorted(fleet.device_ids)
    topic_b = f"iot/telemetry/{fleet.device_ids[device_b]}"
    consumer = Client(fleet, "consumer")
    consumer.client.subscribe(topic_b, qos=1)
    forger = Client(fleet, device_a)
    assert forger.accepted
    marker = f"forged-{uuid.uuid4().hex}".encode()
    forger.client.publish(topic_b, marker, qos=1).wait_for_publish(5)
    time.sleep(6)  # device B publishes meanwhile, so the consumer hears B itself
    forger.close()
    consumer.close()
    payloads = [payload for _topic, payload in consumer.received]
    assert payloads, "the consumer heard nothing from device B at all"
    assert marker not in payloads


def test_device_a_subscribing_to_everything_receives_nothing(fleet: Fleet) -> None:
    device_a = sorted(fleet.device_ids)[0]
    spy = Client(fleet, device_a)
    spy.client.subscribe("iot/#", qos=1)
    time.sleep(6)
    spy.close()
    assert spy.accepted
    assert spy.received == []


def test_the_consumer_cannot_publish(fleet: Fleet) -> None:
    admin = Client(fleet, "admin")
    admin.client.subscribe("iot/#", qos=1)
    consumer = Client(fleet, "consumer")
    marker = f"consumer-{uuid.uuid4().hex}".encode()
    consumer.client.publish("iot/telemetry/ff:ff:ff:ff:ff:ff", marker, qos=1).wait_for_publish(5)
    time.sleep(3)
    consumer.close()
    admin.close()
    assert admin.accepted and admin.received, "the admin should see the fleet's own traffic"
    assert marker not in [payload for _topic, payload in admin.received]


def test_tls_with_another_ca_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp_path / "k.pem"), "-out", str(other_ca), "-days", "1",
         "-subj", "/CN=not the fleet CA"],
        check=True, capture_output=True,
    )  # fmt: skip
    stranger = Client(fleet, "consumer", ca=other_ca)
    stranger.close()
    assert isinstance(stranger.error, ssl.SSLCertVerificationError), stranger.error


def test_a_host_name_mismatch_is_refused(fleet: Fleet) -> None:
    # The broker's address on the fleet network is not among the names its certificate carries.
    direct = Client(fleet, "consumer", host=fleet.broker_ip, port=8883)
    direct.close()
    assert isinstance(direct.error, ssl.SSLCertVerificationError), direct.error
    assert "mismatch" in str(direct.error) or "match" in str(direct.error)


def test_plaintext_is_refused_when_tls_is_on(fleet: Fleet) -> None:
    # The controller gets only the TLS port: plaintext listens on the broker's own loopback.
    published = docker("port", f"{NAME}-broker").split()
    assert published == ["8883/tcp", "->", f"127.0.0.1:{fleet.port}"], published
    plain = Client(fleet, "consumer", host=fleet.broker_ip, port=1883, tls=False)
    plain.close()
    assert not plain.accepted, f"plaintext MQTT accepted on {fleet.broker_ip}:1883"


def test_credentials_stay_out_of_ansible_output_and_journals(fleet: Fleet) -> None:
    journals = "".join(
        docker("exec", name, "journalctl", "--no-pager", "-o", "cat")
        for name in [f"{NAME}-broker", *fleet.device_ids]
    )
    env_file = device_env(f"{NAME}-pi-0001", f"{NAME}-pi-0001")
    assert env_file["MQTT_PASSWORD"] == fleet.passwords[f"{NAME}-pi-0001"]  # the check can find it
    for user, password in fleet.passwords.items():
        assert password not in fleet.deploy_output, f"{user}'s password in ansible-playbook -v"
        assert password not in journals, f"{user}'s password in a journal"


def test_the_agent_runs_unprivileged_and_cannot_read_its_own_secrets(fleet: Fleet) -> None:
    for device in fleet.device_ids:  # one device per host: the host carries its name
        unit = unit_show(device, device, "User", "DynamicUser", "MainPID", "ActiveState")
        assert unit["User"] == f"edge-agent-{device}", unit
        assert unit["DynamicUser"] == "yes" and unit["ActiveState"] == "active", unit
        uid = docker("exec", device, "stat", "-c", "%u", f"/proc/{unit['MainPID']}").strip()
        assert uid != "0", f"{device}'s agent runs as root"
        stat = docker("exec", device, "stat", "-c", "%a %U %G", env_path(device), "/etc/edge-agent")
        assert stat.split("\n")[0].split() == ["600", "root", "root"], stat
        # systemd reads the file as root before dropping privileges; the agent itself cannot.
        denied = as_agent_of(device, device, f"cat {env_path(device)}")
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        # The positive twin: the same identity reads what it is meant to (its shared zipapp).
        allowed = as_agent_of(device, device, "head -c 2 /opt/edge-agent/edge-agent.pyz")
        assert allowed.returncode == 0, allowed.stderr


# Device names (<MTLS_NAME>-pi-0001) name the agents' Unix users: at most 20 characters.
MTLS_NAME = "edge-mtls"


@pytest.fixture(scope="module")
def mtls_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One device, with fleet_mqtt_mtls on: every client must also present a certificate."""
    require_docker()
    port = free_port()
    directory = write_emulated_inventory(
        tmp_path_factory.mktemp("inventory") / "emulated",
        MTLS_NAME,
        broker_tls_port=port,
        device_count=1,
    )
    args = ["-i", str(directory), "-e", "fleet_mqtt_mtls=true"]
    run = ansible_playbook("site.yml", *args)
    try:
        assert run.rc == 0, run.output[-3000:]
        assert "fleet check met: 1 of 1" in run.output
        ca = fleet_cache(MTLS_NAME) / "pki" / "ca.crt"
        yield Fleet(port, 0, ca, fleet_passwords(MTLS_NAME), {}, "", run.output)
    finally:
        ansible_playbook("playbooks/teardown.yml", *args)


def test_mutual_tls_needs_a_client_certificate_from_the_fleet_ca(mtls_fleet: Fleet) -> None:
    clients = mtls_fleet.ca.parent / "clients"
    with_cert = Client(
        mtls_fleet, "consumer", cert=(clients / "consumer.crt", clients / "consumer.key")
    )
    with_cert.close()
    assert with_cert.accepted, with_cert.error or with_cert.connack
    without_cert = Client(mtls_fleet, "consumer")
    without_cert.close()
    assert not without_cert.accepted
    # The device's key is root's; the unit copies it for the instance alone (ExecStartPre=+).
    device = f"{MTLS_NAME}-pi-0001"
    key = f"/etc/edge-agent/devices/{device}/client.key"
    assert docker("exec", device, "stat", "-c", "%a %U", key).split() == ["600", "root"]
    env = device_env(device, device)
    assert env["MQTT_TLS_CERT"] == f"/run/edge-agent/{device}/client.crt", env
    assert env["MQTT_TLS_KEY"] == f"/run/edge-agent/{device}/client.key", env
    # The copy in the instance's runtime directory is its dynamic user's, read-only.
    copy = docker("exec", device, "stat", "-c", "%a %u", env["MQTT_TLS_KEY"]).split()
    pid = unit_show(device, device, "MainPID")["MainPID"]
    agent_uid = docker("exec", device, "stat", "-c", "%u", f"/proc/{pid}").strip()
    assert copy == ["400", agent_uid] and agent_uid != "0", (copy, agent_uid)
    denied = as_agent_of(device, device, f"cat {key}")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    handed = as_agent_of(device, device, f"head -c 27 {env['MQTT_TLS_KEY']}")
    assert handed.returncode == 0 and handed.stdout.startswith("-----BEGIN"), handed
