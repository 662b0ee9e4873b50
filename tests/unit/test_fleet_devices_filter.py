"""The filters that expand inventory hosts into devices and give each its MAC ID."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ansible") is None, reason="needs ansible-core"
)


@pytest.fixture(scope="module")
def devices() -> ModuleType:
    path = ROOT / "plugins" / "filter" / "edge_fleet_devices.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_listed_devices_come_through_with_host_and_index(devices: ModuleType) -> None:
    hostvars = {
        "h1": {
            "fleet_devices": [{"name": "pi-0001", "number": 1, "device_id": "0A:ED:9E:00:00:01"}]
        },
        "h2": {
            "fleet_devices": [
                {"name": "pi-0002", "number": 2, "device_id": "0a:ed:9e:00:00:02"},
                {"name": "pi-0003", "number": 3, "device_id": "0a:ed:9e:00:00:03"},
            ]
        },
    }
    result = devices.fleet_device_list(["h1", "h2"], hostvars)
    assert [(d["name"], d["host"], d["index"]) for d in result] == [
        ("pi-0001", "h1", 1),
        ("pi-0002", "h2", 1),
        ("pi-0003", "h2", 2),
    ]
    assert result[0]["device_id"] == "0a:ed:9e:00:00:01"


def test_hand_written_hosts_number_on_and_name_extra_devices(devices: ModuleType) -> None:
    hostvars = {
        "pi-lab-01.local": {"device_number": 1},
        "pi-lab-02.local": {"devices_per_host": 3},
        "192.168.1.20": {},
    }
    result = devices.fleet_device_list(list(hostvars), hostvars)
    assert [(d["name"], d["number"]) for d in result] == [
        ("pi-lab-01-local", 1),
        ("pi-lab-02-local-1", 2),
        ("pi-lab-02-local-2", 3),
        ("pi-lab-02-local-3", 4),
        ("192-168-1-20", 5),
    ]


def test_identity_facts_win_over_the_inventory(devices: ModuleType) -> None:
    hostvars = {
        "a": {
            "device_number": 1,
            "device_identity_devices": [{"name": "a", "device_id": "B8:27:EB:00:00:02"}],
        }
    }
    assert devices.fleet_device_list(["a"], hostvars)[0]["device_id"] == "b8:27:eb:00:00:02"


@pytest.mark.parametrize(
    ("hostvars", "message"),
    [
        ({"a": {"device_number": 1}, "b": {"device_number": 1}}, "number 1 is used twice"),
        ({"a": {"device_name": "x"}, "b": {"device_name": "x"}}, "name x is used twice"),
        ({"a": {"devices_per_host": 0}}, "devices_per_host must be from 1"),
        ({"a": {"devices_per_host": "two"}}, "devices_per_host must be a whole number"),
        ({"a-very-long-host-name": {}}, "at most 20 characters"),
    ],
)
def test_clashes_and_bad_counts_are_named(devices: ModuleType, hostvars, message) -> None:
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match=message):
        devices.fleet_device_list(list(hostvars), hostvars)


def test_a_device_cannot_take_the_consumers_user(devices: ModuleType) -> None:
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="another MQTT user"):
        devices.fleet_device_list(["consumer"], {"consumer": {}}, ["consumer", "admin"])


def test_derived_ids_keep_device_one_and_differ_for_the_rest(devices: ModuleType) -> None:
    mac = "b8:27:eb:12:34:56"
    ids = [devices.derived_device_id(mac, k) for k in range(1, 65)]
    assert ids[0] == mac
    assert len(set(ids)) == 64
    for derived in ids[1:]:
        first = int(derived[:2], 16)
        assert first & 0b10 and not first & 0b01  # locally administered, unicast
        assert derived[2:] == mac[2:]
    with pytest.raises(Exception, match="at most 64"):
        devices.derived_device_id(mac, 65)


def test_hosts_with_other_macs_never_collide(devices: ModuleType) -> None:
    macs = ["b8:27:eb:00:00:01", "b8:27:eb:00:00:02", "dc:a6:32:00:00:01", "e4:5f:01:00:00:01"]
    ids = [devices.derived_device_id(m, k) for m in macs for k in range(1, 65)]
    assert len(ids) == len(set(ids))


def test_identify_fills_only_missing_ids(devices: ModuleType) -> None:
    wanted = [
        {"name": "a-1", "number": 1, "index": 1, "device_id": ""},
        {"name": "a-2", "number": 2, "index": 2, "device_id": "0a:00:00:00:00:09"},
        {"name": "a-3", "number": 3, "index": 3, "device_id": ""},
    ]
    result = devices.fleet_identify_devices(wanted, "B8:27:EB:12:34:56")
    assert [d["device_id"] for d in result] == [
        "b8:27:eb:12:34:56",
        "0a:00:00:00:00:09",
        devices.derived_device_id("b8:27:eb:12:34:56", 3),
    ]
    assert devices.fleet_identify_devices(wanted, "")[0]["device_id"] == ""
