"""A tiny fleet, deployed with ansible-core's own linear strategy: 2 devices on one host.

site.yml from nothing to both devices verified, a rerun that changes nothing, and teardown, all
with ANSIBLE_STRATEGY=linear: ansible-core has deprecated third-party strategy plugins
(Mitogen's, the default in ansible.cfg), and when it drops them a fleet must still deploy. The
reference fleet reruns under linear; this one deploys from nothing. It is also the fleet of the
developer loop, `make test-quick` (marker `quick`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.fleet import (
    active_agents,
    ansible_playbook,
    fleet_containers,
    require_docker,
    write_emulated_inventory,
)

pytestmark = [pytest.mark.fleet, pytest.mark.quick]

NAME = "edge-quick"


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    require_docker()
    directory = write_emulated_inventory(
        tmp_path_factory.mktemp("inventory") / "emulated", NAME, device_count=2, devices_per_host=2
    )
    yield ["-i", str(directory)]
    ansible_playbook("playbooks/teardown.yml", "-i", str(directory))


LINEAR = {"ANSIBLE_STRATEGY": "linear"}


def test_site_deploys_two_devices_on_one_host_and_verifies_them(inventory: list[str]) -> None:
    run = ansible_playbook("site.yml", *inventory, env=LINEAR)
    assert run.rc == 0, run.failures()
    assert "fleet check met: 2 of 2" in run.output
    assert active_agents(f"{NAME}-pi-host-0001") == [f"{NAME}-pi-0001", f"{NAME}-pi-0002"]


def test_a_rerun_changes_nothing(inventory: list[str]) -> None:
    run = ansible_playbook("site.yml", *inventory, env=LINEAR)
    assert run.rc == 0, run.failures()
    assert run.total("changed") == 0, run.recap()


def test_teardown_leaves_nothing(inventory: list[str]) -> None:
    run = ansible_playbook("playbooks/teardown.yml", *inventory)
    assert run.rc == 0, run.failures()
    assert fleet_containers(NAME) == []
