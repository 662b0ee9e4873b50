"""The fleet deploys with ansible-core's own linear strategy, not only with Mitogen's.

ansible-core has deprecated third-party strategy plugins; when it drops them, ANSIBLE_STRATEGY
=linear (or removing `strategy` from ansible.cfg) must still give a working fleet.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.fleet import (
    ansible_playbook,
    fleet_containers,
    require_docker,
    write_emulated_inventory,
)

pytestmark = pytest.mark.fleet

NAME = "edge-linear"


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    require_docker()
    directory = write_emulated_inventory(
        tmp_path_factory.mktemp("inventory") / "emulated",
        NAME,
        device_count=3,
        devices_per_host=2,
    )
    args = ["-i", str(directory)]
    yield args
    ansible_playbook("playbooks/teardown.yml", *args)
    assert fleet_containers(NAME) == []


def test_site_deploys_and_verifies_with_the_stock_linear_strategy(inventory: list[str]) -> None:
    linear = {"ANSIBLE_STRATEGY": "linear"}
    run = ansible_playbook("site.yml", *inventory, env=linear)
    assert run.rc == 0, run.failures()
    assert "fleet check met: 3 of 3" in run.output

    rerun = ansible_playbook("site.yml", *inventory, env=linear)
    assert rerun.rc == 0, rerun.failures()
    assert rerun.total("changed") == 0, rerun.recap()
