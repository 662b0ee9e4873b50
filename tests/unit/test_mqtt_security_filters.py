"""The filters that build the broker's password file and ACL from the fleet's inventory."""

from __future__ import annotations

import base64
import getpass
import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ansible") is None, reason="needs ansible-core"
)


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hashing() -> ModuleType:
    return load(ROOT / "roles/mosquitto/filter_plugins/mosquitto_password.py")


@pytest.fixture(scope="module")
def fleet() -> ModuleType:
    return load(ROOT / "plugins/filter/edge_fleet_mqtt.py")


def test_hash_is_pbkdf2_sha512_in_mosquitto_format(hashing: ModuleType) -> None:
    entry = hashing.mosquitto_password_hash("s3cret", "pi-0001", 1000)
    kind, iterations, salt, digest = entry.split("$")[1:]
    assert (kind, iterations) == ("7", "1000")
    expected = hashlib.pbkdf2_hmac("sha512", b"s3cret", base64.b64decode(salt), 1000, 64)
    assert base64.b64decode(digest) == expected
    assert "s3cret" not in entry


def test_hash_is_stable_per_user_and_differs_between_users(hashing: ModuleType) -> None:
    first = hashing.mosquitto_password_hash("same", "pi-0001")
    assert first == hashing.mosquitto_password_hash("same", "pi-0001")
    assert first != hashing.mosquitto_password_hash("same", "pi-0002")
    assert first != hashing.mosquitto_password_hash("other", "pi-0001")


@pytest.mark.parametrize(("password", "user"), [("", "a"), ("x", ""), ("x", "a:b"), ("x", "a\nb")])
def test_hash_refuses_bad_input(hashing: ModuleType, password: str, user: str) -> None:
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError):
        hashing.mosquitto_password_hash(password, user)


@pytest.mark.skipif(not shutil.which("mosquitto"), reason="needs mosquitto")
def test_real_mosquitto_accepts_the_hash_and_refuses_a_wrong_password(
    hashing: ModuleType, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    entry = hashing.mosquitto_password_hash("s3cret", "alice")
    (tmp_path / "passwd").write_text(f"alice:{entry}\n")
    conf = tmp_path / "m.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {tmp_path}/passwd\n"
        # As root, mosquitto would drop to user "mosquitto", which cannot read our tmp dir.
        + (f"user {getpass.getuser()}\n" if os.geteuid() == 0 else "")
    )
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)

        def publish(password: str) -> int:
            return subprocess.run(
                [
                    "mosquitto_pub",
                    "-p",
                    str(port),
                    "-u",
                    "alice",
                    "-P",
                    password,
                    "-t",
                    "t",
                    "-m",
                    "m",
                ],
                capture_output=True,
                timeout=10,
            ).returncode

        assert publish("s3cret") == 0
        assert publish("wrong") != 0
    finally:
        broker.terminate()
        broker.wait()


def test_acl_gives_each_device_only_its_own_topics(fleet: ModuleType) -> None:
    acl = fleet.fleet_mqtt_acl(
        {"pi-0002": "0A:ED:9E:00:00:02", "pi-0001": "0a:ed:9e:00:00:01"}, "consumer", "admin"
    )
    by_user = {entry["user"]: entry["topics"] for entry in acl}
    assert by_user["pi-0001"] == [
        {"access": "write", "topic": "iot/telemetry/0a:ed:9e:00:00:01"},
        {"access": "write", "topic": "iot/status/0a:ed:9e:00:00:01"},
    ]
    assert by_user["pi-0002"][0]["topic"] == "iot/telemetry/0a:ed:9e:00:00:02"
    assert all(rule["access"] == "read" for rule in by_user["consumer"])
    assert by_user["admin"] == [{"access": "readwrite", "topic": "#"}]
    assert [entry["user"] for entry in acl][:2] == ["pi-0001", "pi-0002"]


def test_acl_lets_the_monitor_read_telemetry_status_and_broker_figures_and_write_anomalies(
    fleet: ModuleType,
) -> None:
    acl = fleet.fleet_mqtt_acl({"pi-0001": "0a:ed:9e:00:00:01"}, "consumer", "admin", "monitor")
    by_user = {entry["user"]: entry["topics"] for entry in acl}
    assert by_user["monitor"] == [
        {"access": "read", "topic": "iot/telemetry/+"},
        {"access": "read", "topic": "iot/status/+"},
        {"access": "read", "topic": "$SYS/broker/#"},
        {"access": "write", "topic": "iot/anomaly/+"},
    ]
    # Without a monitor user the policy has no entry for one.
    assert "monitor" not in {e["user"] for e in fleet.fleet_mqtt_acl({}, "consumer", "admin")}


@pytest.mark.parametrize("device_id", ["", "0a:ed/x", "+", "a#"])
def test_acl_refuses_a_device_without_a_usable_id(fleet: ModuleType, device_id: str) -> None:
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="pi-0001"):
        fleet.fleet_mqtt_acl({"pi-0001": device_id}, "consumer", "admin")


def test_users_come_out_sorted(fleet: ModuleType) -> None:
    assert fleet.fleet_mqtt_users({"b": "2", "a": "1"}) == [
        {"name": "a", "password": "1"},
        {"name": "b", "password": "2"},
    ]
