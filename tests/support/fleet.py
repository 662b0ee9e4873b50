"""Helpers for tests that drive the real Ansible CLI against emulated fleets in Docker."""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import paho.mqtt.client as mqtt
import pytest
import yaml

from support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def require_docker() -> None:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("docker is installed but the daemon does not answer")


def fleet_cache(fleet: str) -> Path:
    """The controller's files for one fleet: pki/, secrets/, the agent build and slices."""
    return ROOT / ".cache" / "fleet" / fleet


def _service_secrets() -> tuple[str, ...]:
    """The secrets every fleet has besides one per device, read from their one home,
    playbooks/vars/fleet.yml: the MQTT service users (consumer, monitor, admin) and the other
    secrets (the dashboard's login, the telemetry database user's)."""
    facts = yaml.safe_load((ROOT / "playbooks" / "vars" / "fleet.yml").read_text())

    def resolve(item: str) -> str:
        # Entries are literal names or "{{ other_var }}" references to one.
        match = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", item)
        return str(facts[match[1]]) if match else item

    names = [*facts["fleet_mqtt_service_users"], *facts["fleet_other_secrets"]]
    return tuple(sorted(resolve(name) for name in names))


SERVICE_SECRETS = _service_secrets()


def fleet_passwords(fleet: str) -> dict[str, str]:
    """MQTT user -> password, from the credentials file fleet_credentials wrote (not vaulted)."""
    path = fleet_cache(fleet) / "secrets" / "mqtt-credentials.yml"
    return dict(yaml.safe_load(path.read_text())["mqtt_users"])


@dataclass
class PlaybookRun:
    rc: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        """Per-host counters from the PLAY RECAP."""
        hosts: dict[str, dict[str, int]] = {}
        for line in self.output.split("PLAY RECAP")[-1].splitlines():
            # Host lines only; profile_tasks' TASKS RECAP follows with lines like "role : task".
            match = re.match(r"^(\S+)\s+:\s+(ok=\d+.*)$", line)
            if match:
                hosts[match[1]] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match[2])}
        return hosts

    def total(self, counter: str) -> int:
        return sum(host[counter] for host in self.recap().values())

    def failures(self, tail: int = 1500) -> str:
        """The failed tasks' lines, then the end of the output: what an assertion should show."""
        lines = self.output.splitlines()
        failed = [line[:1500] for line in lines if line.startswith(("fatal:", "failed:"))]
        return "\n".join(failed) + "\n...\n" + self.output[-tail:]


def ansible_playbook(
    *args: str, timeout: float = 1800, env: dict[str, str] | None = None
) -> PlaybookRun:
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )
    return PlaybookRun(proc.returncode, proc.stdout + proc.stderr)


# The inventory plugin's options for ports that the fleet publishes on the controller loopback.
PUBLISHED_PORT_OPTIONS = (
    "broker_plaintext_port",
    "broker_tls_port",
    "dashboard_port",
    "prometheus_port",
)


def write_emulated_inventory(directory: Path, name: str, **options: object) -> Path:
    """An emulated inventory of its own (fleet name, host names, free loopback ports) beside the
    project's group_vars. Tests that need a port pass it; the others get free ones. The monitor
    host is off unless a test asks for it (monitor=True)."""
    directory.mkdir(parents=True, exist_ok=True)
    settings: dict[str, object] = {
        "plugin": "edge_fleet",
        "fleet_name": name,
        "name_prefix": f"{name}-pi-",
        "broker_name": f"{name}-broker",
        "monitor_name": f"{name}-monitor",
        "monitor": False,
        **{option: free_port() for option in PUBLISHED_PORT_OPTIONS},
        **options,
    }
    lines = [f"{key}: {value}" for key, value in settings.items()]
    (directory / f"{name}.edge_fleet.yml").write_text("\n".join(lines) + "\n")
    (directory / "group_vars").symlink_to(ROOT / "inventories" / "emulated" / "group_vars")
    return directory


def docker(*args: str) -> str:
    """Run the docker CLI; return its stdout, raising if it fails."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout


def fleet_containers(network: str) -> list[str]:
    out = docker(
        "ps", "-a", "--filter", f"label=org.edge-fleet.fleet={network}", "--format", "{{.Names}}"
    )
    return sorted(out.split())


def fleet_layout(inventory: list[str], *extra: str) -> dict[str, list[dict[str, object]]]:
    """Device host -> its devices ({name, number, device_id, dataset_source}), from the
    inventory plugin as ansible-playbook would see it with the same -i/-e arguments."""
    proc = subprocess.run(
        [str(BIN / "ansible-inventory"), *inventory, *extra, "--list"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    listing = json.loads(proc.stdout)
    hostvars = listing["_meta"]["hostvars"]
    return {host: list(hostvars[host]["fleet_devices"]) for host in listing["devices"]["hosts"]}


# The layout of one device host: a shared zipapp, CA and template unit; per device its own
# unit instance, environment file, slice, state directory and (with mutual TLS) certificate.
def agent_unit(device: str) -> str:
    return f"edge-agent@{device}.service"


def env_path(device: str) -> str:
    return f"/etc/edge-agent/devices/{device}.env"


def slice_path(device: str) -> str:
    return f"/opt/edge-agent/slices/{device}.csv"


def state_path(device: str) -> str:
    """The state directory the agent sees (a symlink into /var/lib/private, DynamicUser's)."""
    return f"/var/lib/edge-agent/{device}"


def private_state_path(device: str) -> str:
    return f"/var/lib/private/edge-agent/{device}"


def on(container: str, script: str) -> str:
    """Run a shell script in a container; return its stdout, raising if it fails."""
    return docker("exec", container, "bash", "-c", script)


def unit_show(container: str, device: str, *properties: str) -> dict[str, str]:
    """systemctl show of one device's agent instance, property -> value."""
    out = docker(
        "exec", container, "systemctl", "show", agent_unit(device),
        *(f"--property={p}" for p in properties),
    )  # fmt: skip
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def agent_restarts(container: str, device: str) -> int:
    """How often systemd restarted the instance on its own (Restart=), not on request."""
    return int(unit_show(container, device, "NRestarts")["NRestarts"])


def active_agents(container: str) -> list[str]:
    """Devices whose agent instance is active on the container."""
    out = docker(
        "exec", container, "systemctl", "list-units", "--state=active", "--plain", "--no-legend",
        "edge-agent@*.service",
    )  # fmt: skip
    units = [line.split()[0] for line in out.splitlines() if line.strip()]
    return sorted(u.removeprefix("edge-agent@").removesuffix(".service") for u in units)


def agent_starts_since(container: str, device: str, since: float) -> int:
    """How many times systemd started the device's instance since `since` (from its journal)."""
    out = docker(
        "exec", container, "journalctl", "-u", agent_unit(device), "-o", "cat", "--no-pager",
        "--since", f"@{since:.6f}",
    )  # fmt: skip
    return sum(line.startswith(f"Started {agent_unit(device)}") for line in out.splitlines())


def device_env(container: str, device: str) -> dict[str, str]:
    """The device's environment file (read as root, as systemd reads it)."""
    text = docker("exec", container, "cat", env_path(device))
    return dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )


def as_agent_of(container: str, device: str, script: str) -> subprocess.CompletedProcess[str]:
    """Run `script` with the Unix identity (uid, gid, no groups) of the device's running agent."""
    pid = unit_show(container, device, "MainPID")["MainPID"]
    assert pid != "0", f"{agent_unit(device)} is not running"
    uid, gid = on(container, f"stat -c '%u %g' /proc/{pid}").split()
    return subprocess.run(
        ["docker", "exec", container, "setpriv", f"--reuid={uid}", f"--regid={gid}",
         "--clear-groups", "bash", "-c", script],
        capture_output=True, text=True,
    )  # fmt: skip


# The edge_agent role's report per host: "N files updated; restarted R of T agents; removed ..."
# (printed as JSON, `"msg": "..."`, or as YAML, `msg: ...`, depending on the callback's format).
_REPORT = re.compile(
    r"ok: \[([^\]]+)\] =>\s*\{?\s*\"?msg\"?: \"?(\d+) files updated;\s+restarted (\d+) of (\d+)"
    r" agents;\s+removed ([^\"\n]*)"
)


@dataclass
class AgentReport:
    files: int
    restarted: int
    agents: int
    removed: list[str]


def agent_reports(output: str) -> dict[str, AgentReport]:
    """The role's report of every host it changed (hosts it did not change print none)."""
    reports = {}
    for match in _REPORT.finditer(output):
        removed = [] if match[5].strip() == "none" else match[5].strip().split(", ")
        reports[match[1]] = AgentReport(int(match[2]), int(match[3]), int(match[4]), removed)
    return reports


class MqttClient:
    """A paho client to a fleet's broker that records its CONNACK and what it receives.

    TLS against `ca` unless tls=False; `cert` is a (certificate, key) pair for mutual TLS.
    """

    def __init__(
        self,
        port: int,
        ca: Path,
        user: Optional[str],
        password: Optional[str] = None,
        host: str = "127.0.0.1",
        tls: bool = True,
        cert: Optional[tuple[Path, Path]] = None,
    ) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"itest-{uuid.uuid4().hex[:8]}"
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        if tls:
            certfile, keyfile = (str(cert[0]), str(cert[1])) if cert else (None, None)
            self.client.tls_set(ca_certs=str(ca), certfile=certfile, keyfile=keyfile)
        self.connack: Optional[Any] = None
        self.error: Optional[BaseException] = None
        self.received: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.received.append((msg.topic, msg.payload))
        try:
            self.client.connect(host, port, keepalive=10)
        except (OSError, ssl.SSLError) as exc:
            self.error = exc
            return
        self.client.loop_start()
        self.connected.wait(10)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connack = reason
        self.connected.set()

    @property
    def accepted(self) -> bool:
        return self.error is None and self.connack is not None and not self.connack.is_failure

    def close(self) -> None:
        if self.error is None:
            self.client.disconnect()
            self.client.loop_stop()
