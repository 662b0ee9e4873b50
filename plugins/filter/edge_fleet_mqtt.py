"""Filters that turn the fleet's inventory into the broker's users and ACL."""

from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError
from edge_agent.protocol import (
    ANOMALY_PREFIX,
    BROKER_STATS_TOPIC,
    STATUS_PREFIX,
    TELEMETRY_PREFIX,
)


def fleet_mqtt_users(credentials: dict[str, str]) -> list[dict[str, str]]:
    """{user: password} -> [{name, password}], in a stable order (the password file's order)."""
    if not isinstance(credentials, dict):
        raise AnsibleFilterError("fleet_mqtt_users: expected a mapping of user name to password")
    return [{"name": name, "password": credentials[name]} for name in sorted(credentials)]


def fleet_mqtt_acl(
    device_ids: dict[str, str],
    consumer: str,
    admin: str,
    monitor: str = "",
    telemetry_prefix: str = TELEMETRY_PREFIX,
    status_prefix: str = STATUS_PREFIX,
    anomaly_prefix: str = ANOMALY_PREFIX,
) -> list[dict[str, Any]]:
    """{device user: device ID} -> the fleet's policy: each device writes only its own two
    topics and reads nothing, the consumer only reads telemetry and status, the monitor reads
    those and the broker's $SYS figures and writes the anomalies it finds, the admin may do
    anything."""
    if not isinstance(device_ids, dict):
        raise AnsibleFilterError("fleet_mqtt_acl: expected a mapping of device user to device ID")
    acl: list[dict[str, Any]] = []
    for user in sorted(device_ids):
        device_id = str(device_ids[user] or "").lower()
        if not device_id or any(c in device_id for c in "+#/"):
            raise AnsibleFilterError(
                f"fleet_mqtt_acl: {user} has no usable device ID ({device_id!r}); "
                "run the identity play first or set device_id in the inventory"
            )
        acl.append(
            {
                "user": user,
                "topics": [
                    {"access": "write", "topic": f"{telemetry_prefix}/{device_id}"},
                    {"access": "write", "topic": f"{status_prefix}/{device_id}"},
                ],
            }
        )
    acl.append(
        {
            "user": consumer,
            "topics": [
                {"access": "read", "topic": f"{telemetry_prefix}/+"},
                {"access": "read", "topic": f"{status_prefix}/+"},
            ],
        }
    )
    if monitor:
        acl.append(
            {
                "user": monitor,
                "topics": [
                    {"access": "read", "topic": f"{telemetry_prefix}/+"},
                    {"access": "read", "topic": f"{status_prefix}/+"},
                    {"access": "read", "topic": BROKER_STATS_TOPIC},
                    {"access": "write", "topic": f"{anomaly_prefix}/+"},
                ],
            }
        )
    acl.append({"user": admin, "topics": [{"access": "readwrite", "topic": "#"}]})
    return acl


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {
            "fleet_mqtt_users": fleet_mqtt_users,
            "fleet_mqtt_acl": fleet_mqtt_acl,
        }
