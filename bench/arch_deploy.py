#!/usr/bin/env python3
"""How much longer an arm64 device (QEMU user-mode emulation) takes to deploy than an amd64 one.

One mixed emulated fleet: a broker and two devices, the first arm64 and the second amd64
(`arm64_count: 1`). After site.yml has built it, each device in turn has its agent removed and
is deployed again on its own (`--limit`), from no agent to a running one, then once more with
nothing to change. Prints both times per architecture and their ratios.

Usage: bench/arch_deploy.py          (the images are built if missing; arm64 takes minutes)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NAME = "edge-archbench"
DEVICES = {"arm64": f"{NAME}-pi-0001", "amd64": f"{NAME}-pi-0002"}
RESET_AGENT = (
    "systemctl disable --now edge-agent.service >/dev/null 2>&1;"
    " rm -rf /opt/edge-agent /etc/edge-agent /var/lib/edge-agent"
    " /etc/systemd/system/edge-agent.service && systemctl daemon-reload"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def playbook(*args: str) -> float:
    started = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), *args], cwd=ROOT, capture_output=True, text=True
    )
    if proc.returncode != 0:
        sys.exit(f"ansible-playbook {' '.join(args)} failed:\n{proc.stdout[-3000:]}")
    return time.monotonic() - started


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="edge-archbench-"))
    inventory = workdir / "emulated"
    inventory.mkdir()
    (inventory / f"{NAME}.edge_fleet.yml").write_text(
        f"plugin: edge_fleet\nfleet_name: {NAME}\nname_prefix: {NAME}-pi-\n"
        f"broker_name: {NAME}-broker\ndevice_count: 2\narm64_count: 1\n"
        f"broker_plaintext_port: {free_port()}\nbroker_tls_port: {free_port()}\nmonitor: false\n"
    )
    (inventory / "group_vars").symlink_to(ROOT / "inventories" / "emulated" / "group_vars")
    args = ["-i", str(inventory)]
    try:
        print(f"site.yml, broker + 1 arm64 + 1 amd64 device: {playbook('site.yml', *args):7.1f} s")
        results = {}
        for arch, host in DEVICES.items():
            subprocess.run(["docker", "exec", host, "bash", "-c", RESET_AGENT], check=True)
            one = [*args, "--limit", host, "playbooks/identity.yml", "playbooks/devices.yml"]
            results[arch] = (playbook(*one), playbook(*one))
        for arch, (fresh, rerun) in results.items():
            print(f"{arch}: deploy the agent {fresh:6.1f} s, rerun with no change {rerun:6.1f} s")
        (arm_fresh, arm_rerun), (amd_fresh, amd_rerun) = results["arm64"], results["amd64"]
        ratio_fresh, ratio_rerun = arm_fresh / amd_fresh, arm_rerun / amd_rerun
        print(f"arm64 / amd64: deploy {ratio_fresh:.1f}x, rerun {ratio_rerun:.1f}x")
    finally:
        playbook("playbooks/teardown.yml", *args)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
