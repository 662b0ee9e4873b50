"""Filters that expand the inventory's hosts into the fleet's devices.

A host (an emulated container or a real Pi) runs one or more devices, each its own agent with its
own name, number, MQTT user and MAC ID. The edge_fleet inventory plugin lists them per host in
`fleet_devices`; a hand-written inventory (the physical lab) gives `devices_per_host` and
`device_number` instead, and these filters expand that the same way everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

MAX_DEVICES_PER_HOST = 64  # derived IDs use six bits of the first octet (see derived_device_id)
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_-]+")
# A device name is a unit instance, an MQTT user, a file name and part of its agent's dynamic
# Unix user, edge-agent-<name>, which systemd limits to 31 characters of these.
DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$")


def derived_device_id(mac: str, index: int) -> str:
    """The ID of device `index` (1-based) on a host whose own MAC is `mac`.

    Device 1 is the MAC itself, as it always was. Device k > 1 flips bits 2-7 of the first octet
    by k - 1 and sets the locally administered bit, so it never equals a real (universally
    administered) MAC, and hosts whose MACs differ anywhere else never collide.
    """
    mac = mac.lower()
    if not _MAC.match(mac):
        raise AnsibleFilterError(f"fleet_derived_device_id: {mac!r} is not a MAC address")
    if not 1 <= index <= MAX_DEVICES_PER_HOST:
        raise AnsibleFilterError(
            f"fleet_derived_device_id: device {index} of a host; at most {MAX_DEVICES_PER_HOST}"
        )
    if index == 1:
        return mac
    first = (int(mac[:2], 16) ^ ((index - 1) << 2)) | 0x02
    return f"{first:02x}{mac[2:]}"


def host_devices(host: str, variables: Mapping[str, Any], first_number: int) -> list[dict]:
    """The devices of one host, from `fleet_devices` or from `devices_per_host`/`device_number`."""
    listed = variables.get("fleet_devices")
    if listed is not None:
        if not isinstance(listed, list) or not all(
            isinstance(d, Mapping) and d.get("name") and d.get("number") for d in listed
        ):
            raise AnsibleFilterError(
                f"fleet_devices: {host}: fleet_devices must be a list of mappings with name and "
                "number"
            )
        return [
            {
                "name": str(d["name"]),
                "number": int(d["number"]),
                "device_id": str(d.get("device_id") or "").lower(),
                "dataset_source": str(d.get("dataset_source") or ""),
                "host": host,
                "index": position,
            }
            for position, d in enumerate(listed, start=1)
        ]
    count = _whole(host, "devices_per_host", variables.get("devices_per_host", 1))
    if not 1 <= count <= MAX_DEVICES_PER_HOST:
        raise AnsibleFilterError(
            f"fleet_devices: {host}: devices_per_host must be from 1 to {MAX_DEVICES_PER_HOST},"
            f" got {count}"
        )
    first = _whole(host, "device_number", variables.get("device_number", first_number))
    # Host names may be addresses or FQDNs; a device name is also a unit instance and user name.
    base = str(variables.get("device_name") or _NOT_NAME.sub("-", host).strip("-"))
    own_id = str(variables.get("device_id") or "").lower()
    return [
        {
            "name": base if count == 1 else f"{base}-{k}",
            "number": first + k - 1,
            "device_id": own_id if k == 1 else "",
            "dataset_source": "",
            "host": host,
            "index": k,
        }
        for k in range(1, count + 1)
    ]


def fleet_device_list(
    hosts: list[str], hostvars: Any, reserved: list[str] | None = None
) -> list[dict[str, Any]]:
    """Every device of `hosts`, in host order, with the IDs the identity play recorded.

    Numbers pick the dataset slices; a host without `device_number` continues after the highest
    number so far. Names and numbers must be unique across the fleet.
    """
    devices: list[dict[str, Any]] = []
    next_number = 1
    for host in hosts:
        variables = hostvars[host]
        known = {d["name"]: d["device_id"] for d in variables.get("device_identity_devices") or []}
        for device in host_devices(host, variables, next_number):
            device["device_id"] = str(known.get(device["name"]) or device["device_id"]).lower()
            device["arch"] = str(variables.get("device_arch") or "")  # empty: not known (a real Pi)
            devices.append(device)
            next_number = max(next_number, device["number"] + 1)
    bad = [d for d in devices if not DEVICE_NAME.match(d["name"])]
    if bad:
        raise AnsibleFilterError(
            f"fleet_devices: device name {bad[0]['name']!r} (host {bad[0]['host']}) must be "
            "letters, digits, '_' and '-', at most 20 characters, because it also names the "
            "agent's systemd user; shorten name_prefix or set device_name"
        )
    taken = [d for d in devices if d["name"] in (reserved or [])]
    if taken:
        raise AnsibleFilterError(
            f"fleet_devices: device name {taken[0]['name']} (host {taken[0]['host']}) is the "
            "name of another MQTT user of the fleet; rename the device"
        )
    _check_unique(devices, "name")
    _check_unique(devices, "number")
    return devices


def fleet_host_devices(variables: Mapping[str, Any], host: str) -> list[dict[str, Any]]:
    """The devices of one host from its own variables alone (numbers must be given)."""
    return host_devices(host, variables, 1)


def fleet_identify_devices(devices: list[dict[str, Any]], mac: str) -> list[dict[str, Any]]:
    """A host's devices with every device_id filled: the inventory's, else derived from `mac`."""
    result = []
    for device in devices:
        device_id = str(device.get("device_id") or "").lower()
        if not device_id and mac:
            device_id = derived_device_id(mac, int(device["index"]))
        result.append(
            {
                "name": device["name"],
                "number": int(device["number"]),
                "index": int(device["index"]),
                "device_id": device_id,
            }
        )
    return result


def fleet_device_ids(devices: list[dict[str, Any]]) -> dict[str, str]:
    """{device name: device ID} of a `fleet_devices` list."""
    return {d["name"]: d["device_id"] for d in devices}


def _check_unique(devices: list[dict[str, Any]], key: str) -> None:
    owner: dict[Any, str] = {}
    for device in devices:
        if device[key] in owner:
            raise AnsibleFilterError(
                f"fleet_devices: device {key} {device[key]} is used twice (hosts "
                f"{owner[device[key]]} and {device['host']}); give each device its own {key}"
            )
        owner[device[key]] = device["host"]


def _whole(host: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not str(value).strip().isdigit():
        raise AnsibleFilterError(
            f"fleet_devices: {host}: {name} must be a whole number, got {value!r}"
        )
    return int(str(value).strip())


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {
            "fleet_device_list": fleet_device_list,
            "fleet_host_devices": fleet_host_devices,
            "fleet_device_ids": fleet_device_ids,
            "fleet_derived_device_id": derived_device_id,
            "fleet_identify_devices": fleet_identify_devices,
        }
