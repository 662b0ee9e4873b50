"""Bad input stops site.yml before any host is created: the wiring, end to end.

Each bad input and its message is tested in process (tests/unit: the inventory plugin, the
slicer task's command, the roles' argument specs). These two prove that the real CLI reaches
those checks first: the plugin's count check, and the controller's dataset check in the first
play, before the emulated hosts play creates anything.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support.bad_inputs import BAD_DATASETS, write_bad_dataset
from support.fleet import (
    ansible_playbook,
    fleet_containers,
    require_docker,
    write_emulated_inventory,
)

pytestmark = pytest.mark.fleet


def test_a_bad_device_count_stops_site_yml_with_one_message(tmp_path: Path) -> None:
    require_docker()
    name = "edge-badcount"
    directory = write_emulated_inventory(tmp_path / "emulated", name)
    run = ansible_playbook("site.yml", "-i", str(directory), "-e", "device_count=abc")
    assert run.rc != 0
    assert "device_count must be a whole number from 1 to 10000, got 'abc'" in run.output
    assert fleet_containers(name) == []


def test_a_bad_dataset_stops_site_yml_before_any_host_is_created(tmp_path: Path) -> None:
    require_docker()
    name = "edge-baddata"
    dataset = write_bad_dataset(tmp_path, "non-numeric")
    directory = write_emulated_inventory(tmp_path / "emulated", name)
    run = ansible_playbook(
        "site.yml", "-i", str(directory), "-e", f"fleet_dataset_source={dataset}"
    )
    assert run.rc != 0
    assert BAD_DATASETS["non-numeric"][1] in run.output, run.failures()
    assert fleet_containers(name) == []
