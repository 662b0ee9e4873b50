#!/usr/bin/env python3
"""How the emulated fleet scales: one table for several fleet sizes, in one run on one machine.

For each N (default 50, 200 and 1,000; the inventory's devices_per_host=auto packs 1,000):
  (a) `docker run` of as many bare systemd containers as the fleet has hosts (16 at a time,
      each until systemd has booted), then their removal: the floor Docker itself sets;
  (b) `site.yml -e device_count=N` from no containers to N verified devices;
  (c) the same command again, which must change nothing;
  then, with the fleet idle for a while, the steady-state memory: the machine's used memory
  (MemTotal - MemAvailable) above what it used before the fleet, and the PSS of every agent and
  of the rest of the containers (systemd, journald, ...) from /proc/<pid>/smaps_rollup.
During (b) it samples the machine's used memory and the controller's RSS (ansible-playbook and
every process under it) every half second and reports the peaks.

Usage: bench/fleet_scale.py [--sizes 50 200 1000] [--settle 60] [--keep]
The image must exist (any earlier `make fleet` builds it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "edge-fleet/pi-os:bookworm"
BARE_PREFIX = "edge-bench-bare-"
SYSTEMD_FLAGS = [
    "--cap-add", "SYS_ADMIN",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--tmpfs", "/run", "--tmpfs", "/run/lock",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--cgroupns=host",
]  # fmt: skip
BIN = Path(sys.executable).parent


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True)


def _boot_bare(name: str) -> None:
    _run(["docker", "run", "-d", "--name", name, *SYSTEMD_FLAGS, IMAGE])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = subprocess.run(
            ["docker", "exec", name, "systemctl", "is-system-running"],
            text=True,
            capture_output=True,
        ).stdout.strip()
        if state in ("running", "degraded"):
            return
        time.sleep(2)  # the same probe interval as the emulated_hosts role
    raise RuntimeError(f"{name} did not boot")


def time_bare_containers(count: int) -> float:
    names = [f"{BARE_PREFIX}{i:04d}" for i in range(1, count + 1)]
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(_boot_bare, names))
    elapsed = time.monotonic() - start
    _run(["docker", "rm", "-f", *names])
    return elapsed


# --- memory ------------------------------------------------------------------------------


def used_mb() -> float:
    info = {}
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss_mb(root: int) -> float:
    """RSS of `root` and every process below it (the controller's side of a deploy)."""
    tree, total, todo = _children(), 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
                total += int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total / 2**20


def pss_kb(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def container_pss_mb() -> tuple[float, float, int]:
    """(PSS of agents, PSS of the containers' other processes, number of agents), in MB."""
    agents = others = count = 0
    base = "/sys/fs/cgroup/memory/docker"
    # systemd in each container makes its own sub-cgroups (system.slice/...) below the container's.
    pids = [
        pid
        for directory, _, files in os.walk(base)
        if "cgroup.procs" in files and directory != base
        for pid in Path(directory, "cgroup.procs").read_text(encoding="ascii").split()
    ]
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"edge-agent.pyz" in cmdline:
            agents += pss_kb(pid)
            count += 1
        else:
            others += pss_kb(pid)
    return agents / 1024, others / 1024, count


# --- runs --------------------------------------------------------------------------------


@dataclass
class Deploy:
    seconds: float
    output: str
    controller_peak_mb: float
    machine_peak_mb: float


def run_playbook(args: list[str]) -> Deploy:
    start = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "ansible-playbook"), *args],
        cwd=ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    peaks = [0.0, 0.0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peaks[0] = max(peaks[0], tree_rss_mb(proc.pid))
            peaks[1] = max(peaks[1], used_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    done.set()
    sampler.join()
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.stderr.write(output[-6000:])
        raise SystemExit(f"ansible-playbook {' '.join(args)} failed (exit {proc.returncode})")
    return Deploy(elapsed, output, peaks[0], peaks[1])


def changed_tasks(output: str) -> int:
    return sum(int(n) for n in re.findall(r"changed=(\d+)", output.split("PLAY RECAP")[-1]))


def host_count(inventory: list[str]) -> int:
    graph = _run([str(BIN / "ansible-inventory"), *inventory, "--graph", "devices"]).stdout
    return len(re.findall(r"--[^@\s]+$", graph, re.MULTILINE)) + 1  # devices + the broker


@dataclass
class Row:
    devices: int
    hosts: int
    bare: float
    bring_up: Deploy
    rerun: Deploy
    rerun_changed: int
    steady_mb: float
    agent_pss_mb: float
    other_pss_mb: float
    agents: int


def measure(devices: int, settle: float) -> Row:
    inventory = ["-i", "inventories/emulated", "-e", f"device_count={devices}"]
    run_playbook(["playbooks/teardown.yml", *inventory])
    hosts = host_count(inventory)
    bare = time_bare_containers(hosts)
    print(f"N={devices}: docker run of {hosts} bare containers {bare:.1f} s", flush=True)
    time.sleep(5)
    baseline = used_mb()
    bring_up = run_playbook(["site.yml", *inventory])
    print(f"N={devices}: site.yml from nothing {bring_up.seconds:.1f} s", flush=True)
    rerun = run_playbook(["site.yml", *inventory])
    print(f"N={devices}: rerun {rerun.seconds:.1f} s", flush=True)
    time.sleep(settle)
    agents, others, count = container_pss_mb()
    return Row(
        devices, hosts, bare, bring_up, rerun, changed_tasks(rerun.output),
        used_mb() - baseline, agents, others, count,
    )  # fmt: skip


def print_table(rows: list[Row]) -> None:
    print()
    print(
        "| N | hosts | bare boot | bring-up (ratio) | rerun (ratio) | rerun changed | "
        "steady memory (per device) | agent PSS each | other PSS per host | "
        "controller peak RSS | machine peak used |"
    )
    print("|---" * 11 + "|")
    for r in rows:
        print(
            f"| {r.devices} | {r.hosts} | {r.bare:.0f} s "
            f"| {r.bring_up.seconds:.0f} s ({r.bring_up.seconds / r.bare:.1f}) "
            f"| {r.rerun.seconds:.0f} s ({r.rerun.seconds / r.bare:.2f}) | {r.rerun_changed} "
            f"| {r.steady_mb / 1024:.1f} GB ({r.steady_mb / r.devices:.1f} MB) "
            f"| {r.agent_pss_mb / max(1, r.agents):.1f} MB ({r.agents} agents) "
            f"| {r.other_pss_mb / max(1, r.hosts):.1f} MB "
            f"| {r.bring_up.controller_peak_mb / 1024:.1f} GB "
            f"| {r.bring_up.machine_peak_mb / 1024:.1f} GB |"
        )
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        ratio = math.log(b.devices / a.devices)

        def exponent(low: float, high: float) -> str:
            return f"{math.log(high / low) / ratio:.2f}"

        print(
            f"\ncost growth from {a.devices} to {b.devices} devices, as the exponent k in "
            f"cost ~ N^k: bring-up {exponent(a.bring_up.seconds, b.bring_up.seconds)}, "
            f"rerun {exponent(a.rerun.seconds, b.rerun.seconds)}, "
            f"steady memory {exponent(a.steady_mb, b.steady_mb)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--settle", type=float, default=60, help="idle seconds before memory")
    parser.add_argument("--keep", action="store_true", help="leave the last fleet running")
    args = parser.parse_args()
    rows = []
    for devices in args.sizes:
        rows.append(measure(devices, args.settle))
        print_table(rows)
    if not args.keep:
        run_playbook(["playbooks/teardown.yml", "-i", "inventories/emulated"])


if __name__ == "__main__":
    main()
