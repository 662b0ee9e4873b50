#!/usr/bin/env python3
"""Time the emulated fleet against the floor that Docker itself sets.

In one run on one machine:
  (a) `docker run` of N bare systemd containers of the fleet image (16 at a time, each until
      systemd has booted), then their removal;
  (b) `site.yml -e device_count=N` from no containers to a verified fleet;
  (c) the same command again, which must change nothing.
Prints all three and the ratios b/a and c/a (targets: <= 3 and <= 0.6).

Usage: bench/fleet_scale.py [--devices 200] [--keep]
The image must exist (any earlier `make fleet` builds it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import re
import subprocess
import sys
import time
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


def _run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kwargs)  # type: ignore[call-overload]


def _boot_bare(name: str) -> None:
    _run(["docker", "run", "-d", "--name", name, *SYSTEMD_FLAGS, IMAGE])
    deadline = time.monotonic() + 180
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


def run_playbook(args: list[str]) -> tuple[float, str]:
    start = time.monotonic()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
    )
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
        raise SystemExit(f"ansible-playbook {' '.join(args)} failed (exit {proc.returncode})")
    return elapsed, proc.stdout


def changed_hosts(recap: str) -> int:
    return sum(int(n) for n in re.findall(r"changed=(\d+)", recap))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="leave the fleet running at the end")
    args = parser.parse_args()
    inventory = ["-i", "inventories/emulated", "-e", f"device_count={args.devices}"]

    run_playbook(["playbooks/teardown.yml", *inventory])
    a = time_bare_containers(args.devices)
    print(f"(a) docker run of {args.devices} bare systemd containers: {a:7.1f} s", flush=True)
    b, _ = run_playbook(["site.yml", *inventory])
    print(f"(b) site.yml from nothing to verified:          {b:7.1f} s", flush=True)
    c, recap = run_playbook(["site.yml", *inventory])
    print(f"(c) site.yml rerun:                              {c:7.1f} s", flush=True)
    print(f"rerun changed tasks: {changed_hosts(recap.split('PLAY RECAP')[-1])}")
    print(f"b/a = {b / a:.2f} (target <= 3)   c/a = {c / a:.2f} (target <= 0.6)")
    if not args.keep:
        run_playbook(["playbooks/teardown.yml", *inventory])


if __name__ == "__main__":
    main()
