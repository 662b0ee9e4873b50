"""Tests for the edge_fleet inventory plugin: the real CLI, and its helpers in-process."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = ROOT / "plugins" / "inventory"
EMULATED = ROOT / "inventories" / "emulated"
SOURCE_MACS = ["00:0f:00:70:91:0a", "1c:bf:ce:15:ec:4d", "b8:27:eb:bf:9d:51"]
BAD_COUNTS = ["0", "-1", "-3", "abc", "1.5", "2.5", "100000"]

# The CLI of the interpreter running the tests, whether or not its venv is on PATH.
ANSIBLE_INVENTORY = str(Path(sys.executable).with_name("ansible-inventory"))

# Work with or without the repository's ansible.cfg: these settings win over it.
ANSIBLE_ENV = {
    "ANSIBLE_INVENTORY_PLUGINS": str(PLUGIN_DIR),
    "ANSIBLE_INVENTORY_ENABLED": "edge_fleet,host_list,yaml,ini,auto",
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
    "ANSIBLE_NOCOLOR": "1",
}

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ansible") is None, reason="needs ansible-core"
)


def run_inventory(source: Path, *args: str, env: dict[str, str] | None = None):
    """Run ansible-inventory on `source` and return the finished process."""
    return subprocess.run(
        [ANSIBLE_INVENTORY, "-i", str(source), *args],
        cwd=ROOT,
        env={**os.environ, **ANSIBLE_ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def inventory_list(source: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = run_inventory(source, "--list", *args, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def write_source(tmp_path: Path, text: str) -> Path:
    """Write an inventory directory holding one .edge_fleet.yml file and return the directory."""
    (tmp_path / "fleet.edge_fleet.yml").write_text("plugin: edge_fleet\n" + text)
    return tmp_path


def devices(data: dict[str, Any]) -> list[str]:
    return data["devices"]["hosts"]


def hostvars(data: dict[str, Any], host: str) -> dict[str, Any]:
    return data["_meta"]["hostvars"][host]


def all_devices(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every device of every host, in host order."""
    return [d for host in devices(data) for d in hostvars(data, host)["fleet_devices"]]


# --- The real CLI -----------------------------------------------------------------------


def test_default_fleet_has_broker_monitor_and_three_devices():
    data = inventory_list(EMULATED)

    assert set(data["emulated"]["children"]) == {"broker", "monitor", "devices", "telemetry_db"}
    assert data["broker"]["hosts"] == ["edge-broker"]
    assert data["monitor"]["hosts"] == ["edge-monitor"]
    assert hostvars(data, "edge-monitor")["fleet_role"] == "monitor"
    assert devices(data) == ["pi-0001", "pi-0002", "pi-0003"]
    broker = hostvars(data, "edge-broker")
    assert broker["fleet_role"] == "broker"
    assert broker["device_arch"] == "amd64"
    assert broker["ansible_connection"] == "docker"
    assert broker["ansible_host"] == "edge-broker"
    first = hostvars(data, "pi-0001")
    assert first["fleet_role"] == "device"
    assert first["fleet_devices"] == [
        {
            "name": "pi-0001",
            "number": 1,
            "device_id": "0a:ed:9e:00:00:01",
            "dataset_source": SOURCE_MACS[0],
        }
    ]
    assert first["fleet_devices_per_host"] == 1
    assert first["ansible_host"] == "pi-0001"
    assert first["fleet_device_count"] == 3
    assert first["fleet_name"] == "edge-fleet"
    assert first["fleet_image"] == "edge-fleet/pi-os:bookworm"
    assert first["fleet_mac_prefix"] == "0a:ed:9e"
    assert first["fleet_connection"] == "docker"
    assert first["fleet_arm64_count"] == 0
    assert first["fleet_broker_plaintext_port"] == 1883
    assert first["fleet_broker_tls_port"] == 8883
    assert first["fleet_dashboard_port"] == 9180
    assert first["fleet_prometheus_port"] == 9090


def test_extra_vars_device_count_beats_the_file():
    # fleet.edge_fleet.yml sets device_count: 3; -e must still win.
    done = run_inventory(EMULATED, "--graph", "-e", "device_count=5")

    assert done.returncode == 0, done.stderr
    assert re.findall(r"pi-\d+", done.stdout) == [f"pi-{n:04d}" for n in range(1, 6)]


def test_device_count_from_environment_when_file_is_silent(tmp_path):
    source = write_source(tmp_path, "")

    data = inventory_list(source, env={"EDGE_FLEET_DEVICE_COUNT": "4"})

    assert len(devices(data)) == 4


def test_macs_are_unique_lowercase_and_locally_administered():
    data = inventory_list(EMULATED, "-e", "device_count=300", "-e", "devices_per_host=1")

    macs = [d["device_id"] for d in all_devices(data)]
    assert len(macs) == len(set(macs)) == 300
    assert all(re.fullmatch(r"0a:ed:9e(:[0-9a-f]{2}){3}", mac) for mac in macs)
    assert hostvars(data, "pi-0256")["fleet_devices"][0]["device_id"] == "0a:ed:9e:00:01:00"
    numbers = [d["number"] for d in all_devices(data)]
    assert sorted(numbers) == list(range(1, 301))


def test_dataset_sources_follow_the_slicer_rule():
    data = inventory_list(EMULATED, "-e", "device_count=7")

    for device in all_devices(data):
        assert device["dataset_source"] == SOURCE_MACS[(device["number"] - 1) % 3]


def test_output_is_deterministic():
    first = run_inventory(EMULATED, "--list", "-e", "device_count=50")
    second = run_inventory(EMULATED, "--list", "-e", "device_count=50")

    assert first.returncode == second.returncode == 0
    assert first.stdout == second.stdout


def test_arm64_count_makes_the_lowest_numbered_devices_arm64():
    data = inventory_list(EMULATED, "-e", "device_count=5", "-e", "arm64_count=2")

    arches = {host: hostvars(data, host)["device_arch"] for host in devices(data)}
    assert arches == {
        "pi-0001": "arm64",
        "pi-0002": "arm64",
        "pi-0003": "amd64",
        "pi-0004": "amd64",
        "pi-0005": "amd64",
    }
    assert hostvars(data, "edge-broker")["device_arch"] == "amd64"
    assert hostvars(data, "pi-0001")["fleet_arm64_count"] == 2


def test_arm64_architecture_makes_every_host_arm64(tmp_path):
    source = write_source(tmp_path, "device_count: 4\narchitecture: arm64\n")

    data = inventory_list(source)

    assert {hostvars(data, h)["device_arch"] for h in [*devices(data), "edge-broker"]} == {"arm64"}
    assert hostvars(data, "pi-0001")["fleet_arm64_count"] == 4


def test_extra_var_emulated_arch_beats_the_file(tmp_path):
    # fleet.edge_fleet.yml sets architecture: amd64; -e emulated_arch=arm64 must still win.
    data = inventory_list(EMULATED, "-e", "emulated_arch=arm64")

    assert {hostvars(data, h)["device_arch"] for h in [*devices(data), "edge-broker"]} == {"arm64"}
    assert hostvars(data, "pi-0001")["fleet_architecture"] == "arm64"
    assert hostvars(data, "pi-0001")["fleet_arm64_count"] == 3


def test_architecture_from_environment_when_file_is_silent(tmp_path):
    source = write_source(tmp_path, "device_count: 2\n")

    data = inventory_list(source, env={"EDGE_FLEET_ARCHITECTURE": "arm64"})

    assert {hostvars(data, h)["device_arch"] for h in [*devices(data), "edge-broker"]} == {"arm64"}


def test_unknown_emulated_arch_is_rejected():
    # set_option checks the documented choices, so a bad -e value cannot slip past them.
    done = run_inventory(EMULATED, "--list", "-e", "emulated_arch=x86")

    assert done.returncode != 0
    assert "Invalid value 'x86' for config 'architecture'" in done.stderr
    assert "Valid values are: amd64, arm64" in done.stderr


def test_arm64_count_above_device_count_fails():
    done = run_inventory(EMULATED, "--list", "-e", "device_count=2", "-e", "arm64_count=3")

    assert done.returncode != 0
    assert "arm64_count must be a whole number from 0 to 2" in done.stderr


def test_ssh_connection_uses_loopback_ports(tmp_path):
    source = write_source(tmp_path, "device_count: 3\nconnection: ssh\nssh_port_base: 23000\n")

    data = inventory_list(source)

    broker = hostvars(data, "edge-broker")
    assert broker["ansible_connection"] == "ssh"
    assert broker["ansible_host"] == "127.0.0.1"
    assert broker["ansible_port"] == 23000
    assert broker["ansible_user"] == "pi"
    assert hostvars(data, "edge-monitor")["ansible_port"] == 22999
    for number, host in enumerate(devices(data), start=1):
        assert hostvars(data, host)["ansible_connection"] == "ssh"
        assert hostvars(data, host)["ansible_host"] == "127.0.0.1"
        assert hostvars(data, host)["ansible_port"] == 23000 + number
        assert hostvars(data, host)["ansible_user"] == "pi"
    assert hostvars(data, "pi-0001")["fleet_connection"] == "ssh"


def test_custom_names_and_prefix(tmp_path):
    source = write_source(
        tmp_path, "device_count: 2\nname_prefix: rpi-\nbroker_name: hub\nmac_prefix: 06:AA:bb\n"
    )

    data = inventory_list(source)

    assert data["broker"]["hosts"] == ["hub"]
    assert devices(data) == ["rpi-0001", "rpi-0002"]
    assert hostvars(data, "rpi-0002")["fleet_devices"][0]["device_id"] == "06:aa:bb:00:00:02"


def test_monitor_can_be_left_out_or_renamed(tmp_path):
    data = inventory_list(write_source(tmp_path, "monitor: false\n"))
    assert "hosts" not in data.get("monitor", {})

    renamed = inventory_list(write_source(tmp_path, "monitor_name: watch\n"))
    assert renamed["monitor"]["hosts"] == ["watch"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("monitor_name: pi-0002\n", "monitor_name pi-0002 looks like a device name"),
        ("monitor_name: edge-broker\n", "broker_name and monitor_name are both edge-broker"),
    ],
)
def test_monitor_name_clashes_fail_with_one_clear_message(tmp_path, options, message):
    done = run_inventory(write_source(tmp_path, options), "--list")
    assert done.returncode != 0
    assert message in done.stderr


@pytest.mark.parametrize("bad", BAD_COUNTS)
def test_bad_device_count_stops_the_cli_with_one_clear_message(bad):
    done = run_inventory(EMULATED, "--list", "-e", f"device_count={bad}")

    assert done.returncode != 0
    assert done.stdout.strip() == ""
    messages = set(re.findall(r"edge_fleet: device_count [^\n]*", done.stderr))
    assert messages == {
        f"edge_fleet: device_count must be a whole number from 1 to 10000, got '{bad}'; "
        "fix it in the .edge_fleet.yml file or with -e device_count=N"
    }


def test_boolean_device_count_is_rejected():
    done = run_inventory(EMULATED, "--list", "-e", '{"device_count": true}')

    assert done.returncode != 0
    assert "device_count must be a whole number from 1 to 10000, got True" in done.stderr


@pytest.mark.parametrize("prefix", ["0b:ed:9e", "08:ed:9e", "0a:ed", "0a-ed-9e", "zz:ed:9e"])
def test_bad_mac_prefix_fails(tmp_path, prefix):
    source = write_source(tmp_path, f'mac_prefix: "{prefix}"\n')

    done = run_inventory(source, "--list")

    assert done.returncode != 0
    assert "edge_fleet: mac_prefix" in done.stderr


def test_verify_file_ignores_other_yaml(tmp_path):
    (tmp_path / "fleet.yml").write_text("plugin: edge_fleet\n")

    done = run_inventory(tmp_path, "--list")

    assert done.returncode != 0
    assert "edge_fleet: " not in done.stderr


# --- In-process ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_module():
    spec = importlib.util.spec_from_file_location("edge_fleet_plugin", PLUGIN_DIR / "edge_fleet.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("value", "expected"), [(1, 1), ("5", 5), (" 7 ", 7), ("0010", 10), (10000, 10000)]
)
def test_parse_count_accepts_ints_and_digit_strings(plugin_module, value, expected):
    assert plugin_module.parse_count("device_count", value, 1, 10000) == expected


@pytest.mark.parametrize(
    "value", [*BAD_COUNTS, 0, -1, 1.5, 2.0, 100000, True, False, None, "", "+5", "1e3", [3]]
)
def test_parse_count_rejects_everything_else(plugin_module, value):
    from ansible.errors import AnsibleParserError

    with pytest.raises(AnsibleParserError, match=r"^edge_fleet: device_count must be") as caught:
        plugin_module.parse_count("device_count", value, 1, 10000)
    assert "\n" not in caught.value.message


def test_parse_mac_prefix(plugin_module):
    from ansible.errors import AnsibleParserError

    assert plugin_module.parse_mac_prefix("0A:ED:9E") == "0a:ed:9e"
    assert plugin_module.parse_mac_prefix("02:00:00") == "02:00:00"
    for bad in ["0b:ed:9e", "00:ed:9e", "0a:ed:9e:01", "0a:ed", "gg:00:00"]:
        with pytest.raises(AnsibleParserError, match="mac_prefix"):
            plugin_module.parse_mac_prefix(bad)


def test_names_and_macs(plugin_module):
    assert plugin_module.device_name("pi-", 1) == "pi-0001"
    assert plugin_module.device_name("pi-", 10000) == "pi-10000"
    assert plugin_module.device_mac("0a:ed:9e", 1) == "0a:ed:9e:00:00:01"
    assert plugin_module.device_mac("0a:ed:9e", 10000) == "0a:ed:9e:00:27:10"


def test_parse_builds_ten_thousand_devices_quickly(tmp_path, monkeypatch):
    """parse() alone, as the manager calls it; bench/inventory_speed.py reports the real times."""
    for key, value in ANSIBLE_ENV.items():
        monkeypatch.setenv(key, value)
    from ansible import context
    from ansible.inventory.data import InventoryData
    from ansible.module_utils.common.collections import ImmutableDict
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import inventory_loader

    monkeypatch.setattr(
        context,
        "CLIARGS",
        ImmutableDict(extra_vars=("device_count=10000", "devices_per_host=1")),
    )
    inventory_loader.add_directory(str(PLUGIN_DIR))
    plugin = inventory_loader.get("edge_fleet")
    source = write_source(tmp_path, "device_count: 3\n") / "fleet.edge_fleet.yml"
    inventory = InventoryData()

    start = time.perf_counter()
    plugin.parse(inventory, DataLoader(), str(source), cache=False)
    elapsed = time.perf_counter() - start

    hosts = inventory.groups["devices"].get_hosts()
    assert len(hosts) == 10000
    assert hosts[-1].name == "pi-10000"
    assert len({host.vars["fleet_devices"][0]["device_id"] for host in hosts}) == 10000
    # Generous bound so slow CI passes; it still catches accidental quadratic work.
    assert elapsed < 5, f"parse took {elapsed:.2f} s"


# --- Packing several devices per host --------------------------------------------------


def test_devices_per_host_packs_in_order_and_names_the_hosts():
    data = inventory_list(EMULATED, "-e", "device_count=10", "-e", "devices_per_host=4")

    assert devices(data) == ["pi-host-0001", "pi-host-0002", "pi-host-0003"]
    per_host = [[d["name"] for d in hostvars(data, h)["fleet_devices"]] for h in devices(data)]
    assert per_host == [
        ["pi-0001", "pi-0002", "pi-0003", "pi-0004"],
        ["pi-0005", "pi-0006", "pi-0007", "pi-0008"],
        ["pi-0009", "pi-0010"],
    ]
    assert [d["number"] for d in all_devices(data)] == list(range(1, 11))
    assert hostvars(data, "pi-host-0003")["fleet_devices_per_host"] == 4


def test_auto_packs_only_when_one_device_per_host_does_not_fit(tmp_path):
    # 100 MB per device and host: 3 fit in any machine's memory, 10 million MB do not.
    small = inventory_list(write_source(tmp_path, "device_count: 3\n"))
    assert hostvars(small, "pi-0001")["fleet_devices_per_host"] == 1

    huge = write_source(tmp_path, "device_count: 50\nhost_memory_mb: 60000\n")
    data = inventory_list(huge)
    assert hostvars(data, "pi-host-0001")["fleet_devices_per_host"] == 10
    assert len(devices(data)) == 5


@pytest.mark.parametrize(
    ("bad", "must_be", "flag"),
    [
        # Whole numbers out of range get parse_count's message; other text, the one naming auto.
        ("0", "a whole number from 1 to 100", "N"),
        ("101", "a whole number from 1 to 100", "N"),
        ("two", "auto or a whole number from 1 to 100", "K"),
        ("1.5", "auto or a whole number from 1 to 100", "K"),
        ("-1", "auto or a whole number from 1 to 100", "K"),
    ],
)
def test_bad_devices_per_host_stops_the_cli_with_one_clear_message(bad, must_be, flag):
    done = run_inventory(EMULATED, "--list", "-e", f"devices_per_host={bad}")

    assert done.returncode != 0
    assert done.stdout.strip() == ""
    messages = set(re.findall(r"edge_fleet: devices_per_host [^\n]*", done.stderr))
    assert messages == {
        f"edge_fleet: devices_per_host must be {must_be}, got '{bad}'; "
        f"fix it in the .edge_fleet.yml file or with -e devices_per_host={flag}"
    }


def test_auto_devices_per_host_arithmetic(plugin_module):
    auto = plugin_module.auto_devices_per_host
    # 24 GB: 200 devices at 102 MB each fit one per host; 1,000 are packed 10 per host.
    assert auto(200, 90, 12, 24000) == 1
    assert auto(235, 90, 12, 24000) == 1
    assert auto(236, 90, 12, 24000) == 10
    assert auto(1000, 90, 12, 24000) == 10
    # Past 9,900 devices, 10 per host would need more hosts than one network holds.
    assert auto(9900, 90, 12, 24000) == 10
    assert auto(9901, 90, 12, 24000) == 11
    assert -(-10000 // auto(10000, 90, 12, 24000)) + 1 <= 1000  # hosts and the broker fit


def test_host_names(plugin_module):
    assert plugin_module.host_name("pi-", 3, 1) == "pi-0003"
    assert plugin_module.host_name("pi-", 3, 10) == "pi-host-0003"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
