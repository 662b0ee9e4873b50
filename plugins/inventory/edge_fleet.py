"""Inventory plugin that describes an emulated edge fleet: a broker, a monitor and N Pi devices."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ansible import constants as C
from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin
from edge_agent.protocol import OCTET, source_mac

DOCUMENTATION = r"""
name: edge_fleet
short_description: Emulated edge fleet of Raspberry Pi containers, an MQTT broker and a monitor
description:
  - Generates the hosts of an emulated edge fleet from a small config file whose name ends in
    C(.edge_fleet.yml) or C(.edge_fleet.yaml).
  - Group C(emulated) has three children, C(broker) (one host, Mosquitto), C(monitor) (one host,
    the fleet's consumer service and Prometheus) and C(devices), the hosts that run agents.
    Container names equal inventory host names. The monitor host is also in group
    C(telemetry_db), where PostgreSQL runs when the fleet's store is C(postgresql).
  - There are I(device_count) devices named C(<name_prefix>0001), C(<name_prefix>0002), ... (zero
    padded to four digits, wider only past 9999). Each host runs I(devices_per_host) of them, in
    order. With one device per host the host carries the device's name; packed hosts are named
    C(<name_prefix>host-0001), ...
  - Every host lists its devices in C(fleet_devices), each with C(name), C(number), a
    deterministic, unique, locally administered MAC address as C(device_id) and the sensor MAC it
    replays from the published dataset as C(dataset_source). The host's architecture is
    C(device_arch) and its container MAC is that of its first device.
  - Group C(emulated) carries the fleet-wide settings as C(fleet_*) variables.
  - Parsing has no side effects; it talks to neither Docker nor the network.
  - An option that lists I(vars) can be overridden with C(-e) extra vars, and extra vars win over
    the value in the config file (the plugin applies them after reading the file).
author:
  - Edge fleet project
options:
  plugin:
    description: Marks the file as a config for this plugin.
    required: true
    type: str
    choices: [edge_fleet]
  device_count:
    description:
      - Number of emulated devices, a whole number from 1 to 10000.
      - Given as an integer or a string of digits (extra vars on the command line are strings).
        Booleans, decimals and other text are rejected.
      - Precedence, highest first, C(-e device_count=N), the config file, the environment, the
        default.
    type: raw
    default: 3
    env:
      - name: EDGE_FLEET_DEVICE_COUNT
    vars:
      - name: device_count
  devices_per_host:
    description:
      - How many devices (agents, each its own systemd service) one emulated host runs, a whole
        number from 1 to 100, or C(auto).
      - C(auto) keeps one device per host while I(device_count) times the budget of a host with
        one device (I(host_memory_mb) + I(device_memory_mb)) fits in the controller's memory
        (MemTotal), and otherwise packs 10 per host, or more where 10 would need more hosts than
        one Docker network takes (990 device hosts, so past 9,900 devices).
      - Precedence, highest first, C(-e devices_per_host=K), the config file, the environment, the
        default.
    type: raw
    default: auto
    env:
      - name: EDGE_FLEET_DEVICES_PER_HOST
    vars:
      - name: devices_per_host
  host_memory_mb:
    description:
      - Memory budget of one emulated host without its agents, in MB (systemd, journald and the
        container, about 35 MB PSS, plus Ansible's connection to it during a deploy).
      - Used by I(devices_per_host=auto) and by the capacity check before hosts are created.
    type: int
    default: 90
  device_memory_mb:
    description:
      - Memory budget of one device's agent, in MB; used like I(host_memory_mb).
      - An agent with TLS measures about 9.5 MB PSS when ten share a host
        (C(bench/agent_memory.py)).
    type: int
    default: 12
  name_prefix:
    description:
      - Prefix of device host and container names; devices are C(<name_prefix><number>).
      - Letters, digits, C(.), C(_) and C(-), starting with a letter.
    type: str
    default: pi-
  broker_name:
    description: Host and container name of the MQTT broker; must not clash with a device name.
    type: str
    default: edge-broker
  monitor:
    description:
      - Whether the fleet has a monitor host (group C(monitor)) that runs the consumer service,
        its dashboard and Prometheus. Without it the C(monitor) group is empty and the monitor
        play does nothing.
    type: bool
    default: true
  monitor_name:
    description: Host and container name of the monitor; must not clash with a device name.
    type: str
    default: edge-monitor
  image:
    description: Container image the devices run; exported as C(fleet_image).
    type: str
    default: edge-fleet/pi-os:bookworm
  architecture:
    description:
      - CPU architecture of the fleet. C(arm64) makes every device and the broker arm64.
      - With C(amd64), I(arm64_count) devices can still be arm64 (a mixed fleet).
      - Precedence, highest first, C(-e emulated_arch=arm64), the config file, the environment,
        the default.
    type: str
    default: amd64
    choices: [amd64, arm64]
    env:
      - name: EDGE_FLEET_ARCHITECTURE
    vars:
      - name: emulated_arch
  arm64_count:
    description:
      - In an C(amd64) fleet, how many devices are arm64. The lowest-numbered devices are chosen,
        so C(arm64_count=2) makes C(pi-0001) and C(pi-0002) arm64.
      - Must be from 0 to I(device_count). Ignored when I(architecture=arm64).
    type: raw
    default: 0
    vars:
      - name: arm64_count
  mac_prefix:
    description:
      - First three octets of every device MAC (C(device_id)), as C(xx:xx:xx) hex.
      - The first octet must have the locally administered bit set and the multicast bit clear,
        so the addresses cannot collide with real hardware. Stored in lower case.
    type: str
    default: 0a:ed:9e
  fleet_name:
    description:
      - Name of the fleet, exported as C(fleet_name). It names the fleet's Docker network, labels
        its containers and keys its artifacts on the controller (C(.cache/fleet/<fleet_name>)).
    type: str
    default: edge-fleet
  connection:
    description:
      - How Ansible reaches the hosts.
      - C(docker) uses the C(docker) connection (community.docker.docker, named so that
        Mitogen can take it over) with C(ansible_host) set to the container name.
      - C(ssh) uses C(ssh) to C(127.0.0.1) as I(ssh_user); the monitor listens on
        I(ssh_port_base) - 1, the broker on I(ssh_port_base) and device host I(n) on
        I(ssh_port_base) + I(n).
    type: str
    default: docker
    choices: [docker, ssh]
    env:
      - name: EDGE_FLEET_CONNECTION
  ssh_port_base:
    description: Controller port mapped to the broker's SSH port; device I(n) uses this plus I(n).
    type: int
    default: 22000
  ssh_user:
    description: Remote user when I(connection=ssh).
    type: str
    default: pi
  broker_plaintext_port:
    description:
      - Controller loopback port that publishes the broker's plaintext MQTT port 1883.
      - Published only when the fleet runs without TLS (C(fleet_mqtt_tls=false)); with TLS the
        broker's plaintext listener is on its own loopback or off, so there is nothing to publish.
    type: int
    default: 1883
  broker_tls_port:
    description: Controller loopback port that publishes the broker's MQTT-over-TLS port 8883.
    type: int
    default: 8883
  dashboard_port:
    description: Controller loopback port that publishes the monitor's web dashboard and metrics.
    type: int
    default: 9180
  prometheus_port:
    description: Controller loopback port that publishes the monitor's Prometheus.
    type: int
    default: 9090
"""

EXAMPLES = r"""
# inventories/emulated/fleet.edge_fleet.yml: three amd64 devices reached with docker exec
plugin: edge_fleet
---
# A mixed fleet of 50 devices where pi-0001..pi-0005 are arm64
plugin: edge_fleet
device_count: 50
arm64_count: 5
---
# Reach the devices over SSH on forwarded loopback ports 22001, 22002, ...
plugin: edge_fleet
connection: ssh
ssh_port_base: 22000

# Override the size from the command line (wins over the file):
#   ansible-inventory -i inventories/emulated --graph -e device_count=5
# Make the whole fleet arm64 (QEMU user-mode emulation on an amd64 controller):
#   ansible-playbook site.yml -e emulated_arch=arm64
"""

MAX_DEVICES = 10000
MAX_DEVICES_PER_HOST = 100
# Devices per host when auto packs, and the device hosts one Docker network holds: a Linux
# bridge takes at most 1,024 ports; Docker's network about 1,000 containers (emulated_hosts'
# max_containers_per_network), less the broker and the monitor, with room to spare.
PACKED_DEVICES_PER_HOST = 10
MAX_HOSTS_PER_NETWORK = 990

# Controller loopback ports, exported as fleet_<option>.
PORT_OPTIONS = ("broker_plaintext_port", "broker_tls_port", "dashboard_port", "prometheus_port")

# Options whose DOCUMENTATION lists `vars`: extra vars of those names override them.
VAR_OPTIONS = ("device_count", "devices_per_host", "arm64_count", "architecture")


_DIGITS = re.compile(r"[0-9]+")
_MAC_PREFIX = re.compile(f"{OCTET}(?::{OCTET}){{2}}")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def parse_count(name: str, value: Any, minimum: int, maximum: int) -> int:
    """Return `value` as an int in [minimum, maximum]; accept ints and strings of digits only."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        number = int(value.strip())
    if number is None or not minimum <= number <= maximum:
        where = f" or with -e {name}=N" if name in VAR_OPTIONS else ""
        raise AnsibleParserError(
            f"edge_fleet: {name} must be a whole number from {minimum} to {maximum}, "
            f"got {_show(value)}; fix it in the .edge_fleet.yml file{where}"
        )
    return number


def parse_mac_prefix(value: Any) -> str:
    """Return a lower-case `xx:xx:xx` prefix that is locally administered and unicast."""
    prefix = str(value).strip().lower()
    if not _MAC_PREFIX.fullmatch(prefix):
        raise AnsibleParserError(
            f"edge_fleet: mac_prefix must be three hex octets like 0a:ed:9e, got {_show(value)}"
        )
    first = int(prefix[:2], 16)
    if first & 0b11 != 0b10:
        raise AnsibleParserError(
            f"edge_fleet: mac_prefix {prefix} must be locally administered and unicast "
            "(first octet with bit 1 set and bit 0 clear, e.g. 0a, 02, 06, 0e)"
        )
    return prefix


def parse_name(option: str, value: Any) -> str:
    """Return `value` if it can start a host and container name."""
    text = str(value)
    if not _NAME.fullmatch(text):
        raise AnsibleParserError(
            f"edge_fleet: {option} must start with a letter and use only letters, digits, "
            f"'.', '_' and '-', got {_show(value)}"
        )
    return text


def memtotal_mb() -> int:
    """The controller's physical memory in MB (read-only; the same on every parse)."""
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise AnsibleParserError("edge_fleet: MemTotal is missing from /proc/meminfo")


def auto_devices_per_host(count: int, host_mb: int, device_mb: int, total_mb: int) -> int:
    """One device per host while that fits in memory, else 10 (more past ~1,000 hosts)."""
    if count * (host_mb + device_mb) <= total_mb:
        return 1
    return max(PACKED_DEVICES_PER_HOST, -(-count // MAX_HOSTS_PER_NETWORK))


def parse_devices_per_host(value: Any, count: int, host_mb: int, device_mb: int) -> int:
    """Return devices per host: `auto` or a whole number from 1 to MAX_DEVICES_PER_HOST."""
    if isinstance(value, str) and value.strip() == "auto":
        return auto_devices_per_host(count, host_mb, device_mb, memtotal_mb())
    if isinstance(value, str) and not _DIGITS.fullmatch(value.strip()):
        raise AnsibleParserError(
            f"edge_fleet: devices_per_host must be auto or a whole number from 1 to "
            f"{MAX_DEVICES_PER_HOST}, got {_show(value)}; fix it in the .edge_fleet.yml file "
            "or with -e devices_per_host=K"
        )
    return parse_count("devices_per_host", value, 1, MAX_DEVICES_PER_HOST)


def host_name(prefix: str, number: int, devices_per_host: int) -> str:
    """Name of host `number`: its device's name when it runs one, else <prefix>host-NNNN."""
    if devices_per_host == 1:
        return device_name(prefix, number)
    return f"{prefix}host-{number:04d}"


def device_name(prefix: str, number: int) -> str:
    """Return the host name of device `number`: the prefix and the number padded to 4 digits."""
    return f"{prefix}{number:04d}"


def device_mac(prefix: str, number: int) -> str:
    """Return the MAC of device `number`: the prefix and the number as three octets."""
    return f"{prefix}:{number >> 16 & 0xFF:02x}:{number >> 8 & 0xFF:02x}:{number & 0xFF:02x}"


def _show(value: Any) -> str:
    """Render a bad value for an error message without Ansible's tagged-type noise."""
    if isinstance(value, str):
        return repr(str(value))
    if isinstance(value, bool):
        return f"{value} (a boolean)"
    return repr(value)


class InventoryModule(BaseInventoryPlugin):
    """Build the groups `emulated`, `broker`, `monitor` and `devices` from the config file."""

    NAME = "edge_fleet"
    # Every value is a constant, a validated name or MAC, or an option from the config file or
    # extra vars (both trusted already). Marking them trusted keeps `ansible-inventory --list`
    # output plain instead of wrapping the generated strings in {"__ansible_unsafe": ...}.
    trusted_by_default = True

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith((".edge_fleet.yml", ".edge_fleet.yaml"))

    def parse(self, inventory: Any, loader: Any, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        self._apply_extra_vars()

        count = parse_count("device_count", self.get_option("device_count"), 1, MAX_DEVICES)
        host_mb = parse_count("host_memory_mb", self.get_option("host_memory_mb"), 1, 65536)
        device_mb = parse_count("device_memory_mb", self.get_option("device_memory_mb"), 1, 65536)
        per_host = parse_devices_per_host(
            self.get_option("devices_per_host"), count, host_mb, device_mb
        )
        arm64_count = parse_count("arm64_count", self.get_option("arm64_count"), 0, count)
        prefix = parse_name("name_prefix", self.get_option("name_prefix"))
        broker = parse_name("broker_name", self.get_option("broker_name"))
        mac_prefix = parse_mac_prefix(self.get_option("mac_prefix"))
        architecture = self.get_option("architecture")
        connection = self.get_option("connection")
        monitor = parse_name("monitor_name", self.get_option("monitor_name"))
        ports = {
            option: parse_count(option, self.get_option(option), 1, 65535)
            for option in PORT_OPTIONS
        }
        ssh_base = parse_count("ssh_port_base", self.get_option("ssh_port_base"), 2, 65535 - count)
        if architecture == "arm64":
            arm64_count = count
        self._prefix, self._mac_prefix = prefix, mac_prefix
        for option, name in (("broker_name", broker), ("monitor_name", monitor)):
            if name.startswith(prefix) and name[len(prefix) :].removeprefix("host-").isdigit():
                raise AnsibleParserError(
                    f"edge_fleet: {option} {name} looks like a device name for name_prefix "
                    f"{prefix}; choose another {option}"
                )
        if broker == monitor:
            raise AnsibleParserError(
                f"edge_fleet: broker_name and monitor_name are both {broker}; give them two names"
            )

        inv = self.inventory
        for group in ("emulated", "broker", "monitor", "devices", "telemetry_db"):
            inv.add_group(group)
            if group != "emulated":
                inv.add_child("emulated", group)

        fleet_vars = {
            "fleet_device_count": count,
            "fleet_devices_per_host": per_host,
            "fleet_host_memory_mb": host_mb,
            "fleet_device_memory_mb": device_mb,
            "fleet_arm64_count": arm64_count,
            "fleet_architecture": architecture,
            "fleet_broker_name": broker,
            "fleet_name": parse_name("fleet_name", self.get_option("fleet_name")),
            "fleet_image": self.get_option("image"),
            "fleet_mac_prefix": mac_prefix,
            "fleet_connection": connection,
            **{f"fleet_{option}": port for option, port in ports.items()},
        }
        if connection == "docker":
            # The short name routes to community.docker.docker; Mitogen takes over only this one.
            connection_vars = {"ansible_connection": "docker"}
        else:
            connection_vars = {
                "ansible_connection": "ssh",
                "ansible_user": self.get_option("ssh_user"),
            }
        # Fleet-wide settings go on `all` so that plays on the controller (localhost) see them too.
        for key, value in fleet_vars.items():
            inv.set_variable("all", key, value)
        for key, value in connection_vars.items():
            inv.set_variable("emulated", key, value)
        for group in ("broker", "monitor"):
            inv.set_variable(group, "fleet_role", group)
        inv.set_variable("devices", "fleet_role", "device")

        infrastructure = [(broker, "broker", ssh_base)]
        if self.get_option("monitor"):
            infrastructure.append((monitor, "monitor", ssh_base - 1))
        for name, group, ssh_port in infrastructure:
            inv.add_host(name, group=group)
            inv.set_variable(name, "device_arch", architecture)
            self._set_address(name, connection, ssh_port)
        if self.get_option("monitor"):
            # PostgreSQL, when the fleet's store is postgresql, runs beside the consumer it
            # serves (playbooks/telemetry_db.yml; a no-op for the default SQLite store).
            inv.add_host(monitor, group="telemetry_db")

        for index, first in enumerate(range(1, count + 1, per_host), start=1):
            numbers = range(first, min(first + per_host, count + 1))
            host = inv.add_host(host_name(prefix, index, per_host), group="devices")
            inv.set_variable(host, "fleet_devices", [self._device(n) for n in numbers])
            inv.set_variable(host, "device_arch", "arm64" if first <= arm64_count else "amd64")
            self._set_address(host, connection, ssh_base + index)

    def _device(self, number: int) -> dict[str, Any]:
        return {
            "name": device_name(self._prefix, number),
            "number": number,
            "device_id": device_mac(self._mac_prefix, number),
            # The dataset slicer's rule: SOURCE_MACS[(number - 1) % 3] (edge_agent.protocol).
            "dataset_source": source_mac(number),
        }

    def _apply_extra_vars(self) -> None:
        """Let extra vars beat the config file for the options that declare `vars`.

        Ansible ranks an option set in the file above its `vars`, so `-e device_count=5` would
        silently lose to `device_count: 3` in the file. On the command line the user expects the
        opposite, as everywhere else in Ansible.
        """
        extra = self._vars if isinstance(self._vars, Mapping) else {}
        definitions = C.config.get_configuration_definitions("inventory", self._load_name)
        for option in VAR_OPTIONS:
            for source in definitions.get(option, {}).get("vars", [{"name": option}]):
                if source["name"] in extra:
                    self.set_option(option, extra[source["name"]])

    def _set_address(self, host: str, connection: str, ssh_port: int) -> None:
        if connection == "docker":
            self.inventory.set_variable(host, "ansible_host", host)
        else:
            self.inventory.set_variable(host, "ansible_host", "127.0.0.1")
            self.inventory.set_variable(host, "ansible_port", ssh_port)
