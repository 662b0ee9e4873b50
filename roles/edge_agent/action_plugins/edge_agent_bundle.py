"""Action: ship one host's agent bundle and start one edge-agent@<device> instance per device.

The controller half. It lays out every file the host's agents need (the zipapp, the CA and the
template unit, shared; each device's slice, environment file and client certificate, its own),
hashes them, and asks the host (module edge_agent_bundle) which differ. Only those are sent, in
a second call that installs them and restarts exactly the instances whose inputs changed. An
unchanged host costs one module call and reports `changed=false`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# A device name is a unit instance, an MQTT user, a file name and part of its dynamic Unix user
# (edge-agent-<name>, which systemd limits to 31 characters of letters, digits, '_' and '-').
DEVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,19}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# Lines of the environment file that systemd would misread.
UNSAFE_VALUE = re.compile(r"[\n\r\\\"'$`]")

ARGUMENT_SPEC: dict[str, Any] = {
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "devices": {"type": "list", "elements": "dict", "default": []},
    "slices_dir": {"type": "path", "default": ""},
    "passwords": {"type": "dict", "default": {}, "no_log": True},
    "client_cert_dir": {"type": "path", "default": ""},
    "environment": {"type": "dict", "default": {}},
    "pyz_src": {"type": "path"},
    "ca_src": {"type": "path", "default": ""},
    "unit_content": {"type": "str", "default": ""},
    "unit": {"type": "path", "default": "/etc/systemd/system/edge-agent@.service"},
    "install_dir": {"type": "path", "default": "/opt/edge-agent"},
    "config_dir": {"type": "path", "default": "/etc/edge-agent"},
    "state_dir": {"type": "path", "default": "/var/lib/edge-agent"},
    "runtime_dir": {"type": "path", "default": "/run/edge-agent"},
    "pi_groups": {"type": "list", "elements": "str", "default": []},
    "legacy_units": {"type": "list", "elements": "path", "default": []},
    "legacy_files": {"type": "list", "elements": "path", "default": []},
    "legacy_users": {"type": "list", "elements": "str", "default": []},
}


class Bundle:
    """The wanted files of one host: path -> (bytes, mode), and what each instance reads."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        self.instances: dict[str, list[str]] = {}

    def add(self, path: str, data: bytes, mode: str) -> str:
        self.files[path] = (data, mode)
        return path

    def spec(self) -> dict[str, dict[str, str]]:
        return {
            path: {"sha256": hashlib.sha256(data).hexdigest(), "mode": mode}
            for path, (data, mode) in self.files.items()
        }


def read_file(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise AnsibleActionFail(
            f"edge_agent_bundle: cannot read {what} {path}: {exc.strerror}"
        ) from None


def env_text(values: dict[str, Any]) -> bytes:
    lines = ["# Managed by the edge_agent role; changes here are overwritten."]
    for name, value in values.items():
        text = str(value)
        if UNSAFE_VALUE.search(text):
            raise AnsibleActionFail(
                f"edge_agent_bundle: environment value of {name} holds a quote, backslash, '$', "
                "'`' or a line break, which the unit's EnvironmentFile would misread"
            )
        lines.append(f"{name}={text}")
    return ("\n".join(lines) + "\n").encode()


def build(args: dict[str, Any]) -> Bundle:
    bundle = Bundle()
    install, config, unit = args["install_dir"], args["config_dir"], args["unit"]
    shared = [
        bundle.add(f"{install}/edge-agent.pyz", read_file(args["pyz_src"], "agent"), "0755"),
        bundle.add(unit, args["unit_content"].encode(), "0644"),
    ]
    if args["ca_src"]:
        shared.append(bundle.add(f"{config}/ca.crt", read_file(args["ca_src"], "CA"), "0644"))
    for device in args["devices"]:
        name = str(device.get("name", ""))
        device_id = str(device.get("device_id", "")).lower()
        if not DEVICE_NAME_RE.match(name):
            raise AnsibleActionFail(
                f"edge_agent_bundle: device name {name!r} must be letters, digits, '_' and '-', "
                "starting with a letter or digit, at most 20 characters (it names the agent's "
                "systemd user, edge-agent-<name>)"
            )
        if not MAC_RE.match(device_id):
            raise AnsibleActionFail(
                f"edge_agent_bundle: {name}: device_id {device_id!r} is not a MAC address"
            )
        if name in bundle.instances:
            raise AnsibleActionFail(f"edge_agent_bundle: device {name} is listed twice")
        number = int(device.get("number", 0))
        slice_src = os.path.join(args["slices_dir"], f"device-{number:04d}.csv")
        slice_data = read_file(slice_src, "slice")
        own = [bundle.add(f"{install}/slices/{name}.csv", slice_data, "0644")]
        # systemd reads the environment file, and copies the client key, as root before it
        # starts the agent under its own dynamic user: no other device's agent can read them.
        runtime = f"{args['runtime_dir']}/{name}"
        # The shared settings first: they cannot replace a device's own identity or secrets.
        env: dict[str, Any] = {
            **args["environment"],
            "DEVICE_NAME": name,
            "DEVICE_ID": device_id,
            "MQTT_USERNAME": name,
            "MQTT_PASSWORD": args["passwords"].get(name, ""),
            "DATASET_PATH": f"{install}/slices/{name}.csv",
            "STATE_DIR": f"{args['state_dir']}/{name}",
        }
        if not env["MQTT_PASSWORD"]:
            del env["MQTT_USERNAME"], env["MQTT_PASSWORD"]
        if args["ca_src"]:
            env["MQTT_TLS_CA"] = f"{config}/ca.crt"
        if args["client_cert_dir"]:
            cert_src = os.path.join(args["client_cert_dir"], name)
            own.append(
                bundle.add(
                    f"{config}/devices/{name}/client.crt",
                    read_file(f"{cert_src}.crt", "client certificate"),
                    "0600",
                )
            )
            own.append(
                bundle.add(
                    f"{config}/devices/{name}/client.key",
                    read_file(f"{cert_src}.key", "client key"),
                    "0600",
                )
            )
            env["MQTT_TLS_CERT"] = f"{runtime}/client.crt"
            env["MQTT_TLS_KEY"] = f"{runtime}/client.key"
        own.append(bundle.add(f"{config}/devices/{name}.env", env_text(env), "0600"))
        bundle.instances[name] = shared + own
    return bundle


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        present = args["state"] == "present"
        if present and not args["pyz_src"]:
            raise AnsibleActionFail("edge_agent_bundle: pyz_src is required with state=present")
        # The unit names these as StateDirectory=/RuntimeDirectory=, relative to /var/lib and /run.
        for option, parent in (("state_dir", "/var/lib"), ("runtime_dir", "/run")):
            if os.path.dirname(args[option].rstrip("/")) != parent:
                raise AnsibleActionFail(
                    f"edge_agent_bundle: {option} {args[option]} must be directly under {parent}"
                )
        bundle = build(args) if present else Bundle()
        module_args = {
            "state": args["state"],
            "files": bundle.spec(),
            "instances": bundle.instances,
            "unit": args["unit"],
            "directories": {
                args["install_dir"]: "0755",
                f"{args['install_dir']}/slices": "0755",
                args["config_dir"]: "0755",
                f"{args['config_dir']}/devices": "0700",
            },
            "state_dir": args["state_dir"],
            "record": f"{args['config_dir']}/bundle.json",
            "pi_groups": args["pi_groups"],
            "legacy_units": args["legacy_units"],
            "legacy_files": args["legacy_files"],
            "legacy_users": args["legacy_users"],
        }
        first = self._execute_module(
            module_name="edge_agent_bundle", module_args=module_args, task_vars=task_vars
        )
        if first.get("failed") or not first.get("needs"):
            first.pop("needs", None)
            return {**result, **first}
        module_args["contents"] = {
            path: base64.b64encode(bundle.files[path][0]).decode() for path in first["needs"]
        }
        second = self._execute_module(
            module_name="edge_agent_bundle", module_args=module_args, task_vars=task_vars
        )
        if second.get("needs"):
            raise AnsibleActionFail(
                "edge_agent_bundle: files changed on the host while they were being installed: "
                + ", ".join(second["needs"][:5])
            )
        return {**result, **second}
