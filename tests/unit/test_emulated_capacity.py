"""The emulated hosts' capacity check: memory per host and per device, pids, bridge ports."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ansible") is None, reason="needs ansible-core"
)

PARAMS = {
    "memory_per_host_mb": 90,
    "memory_per_device_mb": 12,
    "pids_per_host": 40,
    "max_containers_per_network": 1000,
}


@pytest.fixture
def hosts_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    path = ROOT / "roles" / "emulated_hosts" / "library" / "edge_fleet_hosts.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "_meminfo_available_mb", lambda: 22000)
    monkeypatch.setattr(module, "_pids_headroom", lambda: 4_000_000)
    return module


def hosts(count: int, devices: int) -> list[dict]:
    return [{"name": f"h{i}", "role": "device", "devices": devices} for i in range(count)]


def test_a_packed_thousand_fits_where_a_thousand_single_hosts_do_not(hosts_module):
    check = hosts_module._capacity_error
    assert check(hosts(100, 10), 0, 101, PARAMS) is None
    error = check(hosts(997, 1), 0, 998, PARAMS)
    assert error is not None
    assert "997 new emulated hosts with 997 devices do not fit in memory" in error
    assert "about 215 more devices would fit" in error
    assert "devices_per_host" in error
    assert "nothing was created" in error


def test_devices_added_to_existing_hosts_count_too(hosts_module):
    check = hosts_module._capacity_error
    assert check([], 1800, 101, PARAMS) is None  # 22 GB for 1,800 devices of 12 MB
    assert "with 1900 devices" in check([], 1900, 101, PARAMS)


def test_one_network_takes_about_a_thousand_containers(hosts_module):
    error = hosts_module._capacity_error(hosts(1001, 10), 0, 1002, PARAMS)
    assert error is not None
    assert "1002 containers do not fit on one Docker network" in error
    assert "-e devices_per_host=K" in error


def test_the_pids_limit_is_named_when_it_binds(hosts_module, monkeypatch):
    monkeypatch.setattr(hosts_module, "_pids_headroom", lambda: 1000)
    error = hosts_module._capacity_error(hosts(30, 1), 0, 31, PARAMS)
    assert error is not None
    assert "the pids limit" in error


class FakeContainer:
    def __init__(self, created_with: int, running_agents: int) -> None:
        self.labels = {"org.edge-fleet.devices": str(created_with)}
        self.status = "running"
        self.agents = running_agents
        self.execs = 0

    def exec_run(self, argv: list[str]):
        self.execs += 1

        class Result:
            output = "".join(f"edge-agent@d{i}.service\n" for i in range(self.agents)).encode()

        return Result()


def test_devices_already_running_on_a_grown_host_are_not_counted_again(hosts_module):
    grown = FakeContainer(created_with=2, running_agents=5)  # grew 2 -> 5 on an earlier run
    growing = FakeContainer(created_with=2, running_agents=2)
    same = FakeContainer(created_with=5, running_agents=5)
    existing = {"grown": grown, "growing": growing, "same": same}
    wanted = {name: {"role": "device", "devices": 5} for name in existing}

    assert hosts_module._added_devices(existing, wanted) == 3
    assert same.execs == 0  # a host that wants no more than it was made with is not asked
