"""The physical-lab path without hardware: site.yml over SSH with become, as user `pi`.

Emulated hosts run sshd with key-only login for `pi` and passwordless sudo, like a Raspberry Pi
OS Lite image set up with Raspberry Pi Imager. The deployment uses the physical inventory's
group_vars and a generated hosts file that points at these hosts' loopback SSH ports.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from support.fleet import (
    ROOT,
    active_agents,
    ansible_playbook,
    device_env,
    docker,
    require_docker,
    write_emulated_inventory,
)
from support.ports import free_port

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
        broker_plaintext_port=mqtt_port,
        broker_tls_port=mqtts_port,
    )
    args = ["-i", str(directory)]
    run = ansible_playbook("playbooks/emulated_hosts.yml", *args)
    assert run.rc == 0, run.output[-3000:]
    yield {"mqtt_port": mqtt_port, "mqtts_port": mqtts_port}
    ansible_playbook("playbooks/teardown.yml", *args)


def physical_inventory(directory: Path, record_keys: bool = True) -> Path:
    """A lab hosts file, as a user would write it, plus the project's physical group_vars."""
    key = ROOT / ".cache" / "fleet" / "ssh" / "id_ed25519"
    directory.mkdir(parents=True)
    # The README's lab step: record each host's key first; Ansible then checks it.
    # Beside the inventory, not in it: Ansible would read it as an inventory source.
    known_hosts = directory.parent / f"{directory.name}-known_hosts"
    ports = [SSH_PORT_BASE + n for n in range(DEVICES + 1)]
    scans = [
        subprocess.run(
            ["ssh-keyscan", "-p", str(port), "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
        for port in ports
    ]
    known_hosts.write_text("".join(scans) if record_keys else "")

    def host(port: int) -> dict[str, object]:
        return {
            "ansible_host": "127.0.0.1",
            "ansible_port": port,
            "ansible_ssh_private_key_file": str(key),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts}",
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
        "-e", "fleet_controller_broker_host=127.0.0.1",
        "-e", f"fleet_broker_plaintext_port={emulated['mqtt_port']}",
        "-e", f"fleet_broker_tls_port={emulated['mqtts_port']}",
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


def test_a_lab_host_with_an_unknown_key_is_refused(emulated: dict[str, object], tmp_path: Path):
    """A real lab keeps host-key checking: a host whose key was never recorded is unreachable."""
    inventory = physical_inventory(tmp_path / "unscanned", record_keys=False)
    run = ansible_playbook("playbooks/identity.yml", "-i", str(inventory), "-e", "device_count=1")
    assert run.rc != 0
    # ssh says "Host key verification failed"; Mitogen, which runs ssh, says so in its own words.
    failure = re.search(r"host key verification failed|mismatching host key", run.output, re.I)
    assert failure, run.output[-3000:]
