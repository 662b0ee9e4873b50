"""Helpers for tests that drive the real Ansible CLI against emulated fleets in Docker."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def require_docker() -> None:
    if shutil.which("docker") is None:
        pytest.skip("docker is not installed")
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.fail("docker is installed but the daemon does not answer")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def fleet_cache(fleet: str) -> Path:
    """The controller's files for one fleet: pki/, secrets/, the agent build and slices."""
    return ROOT / ".cache" / "fleet" / fleet


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


def ansible_playbook(*args: str, timeout: float = 1800) -> PlaybookRun:
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return PlaybookRun(proc.returncode, proc.stdout + proc.stderr)


def write_emulated_inventory(directory: Path, name: str, **options: object) -> Path:
    """An emulated inventory of its own (network, names, ports) beside the project's group_vars."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["plugin: edge_fleet", f"network: {name}", f"name_prefix: {name}-pi-"]
    lines.append(f"broker_name: {name}-broker")
    lines += [f"{key}: {value}" for key, value in options.items()]
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
