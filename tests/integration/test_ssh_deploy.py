"""The physical-lab path without hardware: site.yml over SSH with become, as user `pi`.

Emulated hosts run sshd with key-only login for `pi` and passwordless sudo, like a Raspberry Pi
OS Lite image set up with Raspberry Pi Imager. The deployment uses the physical inventory's
group_vars and a generated hosts file that points at these hosts' loopback SSH ports.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fleet_helpers import (
    ROOT,
    active_agents,
    ansible_playbook,
    device_env,
    docker,
    free_port,
    require_docker,
    write_emulated_inventory,
)

pytestmark = pytest.mark.fleet

NAME = "edge-ssh"
DEVICES = 2
SSH_PORT_BASE = 22300


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    require_docker()
    mqtt_port, mqtts_port = free_port(), free_port()
    directory = write_emulated_inventory(
        tmp_path_factory.mktemp("emulated") / "emulated",
        NAME,
        device_count=DEVICES,
        connection="ssh",
        ssh_port_base=SSH_PORT_BASE,
        mqtt_host_port=mqtt_port,
        mqtts_host_port=mqtts_port,
    )
    args = ["-i", str(directory)]
    run = ansible_playbook("playbooks/emulated_hosts.yml", *args)
    assert run.rc == 0, run.output[-3000:]
    yield {"mqtt_port": mqtt_port, "mqtts_port": mqtts_port}
    ansible_playbook("playbooks/teardown.yml", *args)


def physical_inventory(directory: Path) -> Path:
    """A lab hosts file, as a user would write it, plus the project's physical group_vars."""
    key = ROOT / ".cache" / "fleet" / "ssh" / "id_ed25519"

    def host(port: int) -> dict[str, object]:
        return {
            "ansible_host": "127.0.0.1",
            "ansible_port": port,
            "ansible_ssh_private_key_file": str(key),
        }

    devices = {f"{NAME}-pi-{n:04d}": host(SSH_PORT_BASE + n) for n in range(1, DEVICES + 1)}
    hosts = {
        "all": {
            "children": {
                "broker": {"hosts": {f"{NAME}-broker": host(SSH_PORT_BASE)}},
                "devices": {"hosts": devices},
            }
        }
    }
    directory.mkdir(parents=True)
    (directory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (directory / "group_vars").symlink_to(ROOT / "inventories" / "physical" / "group_vars")
    return directory


def test_site_deploys_over_ssh_with_become_and_agents_publish(
    emulated: dict[str, object], tmp_path: Path
) -> None:
    inventory = physical_inventory(tmp_path / "physical")
    # The controller reaches the broker through the port its container publishes on loopback;
    # on a real lab that is the broker Pi's own address.
    controller_view = [
        "-e", "fleet_consumer_broker_host=127.0.0.1",
        "-e", f"fleet_mqtt_host_port={emulated['mqtt_port']}",
        "-e", f"fleet_mqtts_host_port={emulated['mqtts_port']}",
    ]  # fmt: skip
    run = ansible_playbook("site.yml", "-i", str(inventory), *controller_view)
    assert run.rc == 0, run.output[-4000:]
    assert f"fleet check met: {DEVICES} of {DEVICES}" in run.output
    recap = run.recap()
    assert set(recap) == {"localhost", f"{NAME}-broker", *(f"{NAME}-pi-{n:04d}" for n in (1, 2))}
    # Every host was reached over SSH as `pi` with its key, and escalated with sudo.
    for name in recap.keys() - {"localhost"}:
        journal = docker("exec", name, "journalctl", "--no-pager", "-o", "cat")
        assert "Accepted publickey for pi" in journal, name
        assert re.search(r"\bpi : .*; USER=root ; COMMAND=", journal), name

    # A hand-written inventory runs one device per host, named after it, whose ID is the
    # host's own MAC (the physical path learns it from the host's network facts).
    for n in range(1, DEVICES + 1):
        name = f"{NAME}-pi-{n:04d}"
        assert active_agents(name) == [name], name
        env = device_env(name, name)
        mac = docker("exec", name, "cat", "/sys/class/net/eth0/address").strip()
        assert (env["DEVICE_ID"], env["MQTT_USERNAME"]) == (mac, name), env

    rerun = ansible_playbook("site.yml", "-i", str(inventory), *controller_view)
    assert rerun.rc == 0, rerun.output[-4000:]
    assert rerun.total("changed") == 0, rerun.recap()
