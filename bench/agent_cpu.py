#!/usr/bin/env python3
"""Idle CPU of edge-agent: N agents at the default 5 s interval, % of one core per agent.

Starts its own mosquitto on a free loopback port (TLS with a throwaway CA unless --no-tls),
starts N agents (default 20) configured like the systemd unit, lets them connect for --warmup
seconds (start-up costs ~0.1 s of CPU once and is left out), then reads utime+stime (clock ticks)
from /proc/<pid>/stat, the exact on-CPU time from /proc/<pid>/schedstat and the context-switch
counts (one per sleep in select() and one per fsync of the state file) at the start and end of a
--duration window. Target: <= 0.03% of one core per agent.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from agent_memory import agent_command, agent_env, mosquitto, stop, write_slice

TICK = os.sysconf("SC_CLK_TCK")


def sample(pid: int) -> tuple[int, int, int]:
    """(utime+stime ticks, on-CPU ns or -1, voluntary + involuntary context switches)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            ns = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ns = -1
    switches = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if "ctxt_switches:" in line:
                switches += int(line.split()[1])
    return ticks, ns, switches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0, help="PUBLISH_INTERVAL")
    parser.add_argument("--duration", type=float, default=60.0, help="measured window, s")
    parser.add_argument("--warmup", type=float, default=10.0, help="s before the window")
    parser.add_argument("--pyz", help="this edge-agent.pyz instead of one built from agent/")
    parser.add_argument("--source", action="store_true", help="python -m edge_agent from agent/")
    parser.add_argument("--python", default="/usr/bin/python3", help="interpreter for the agent")
    parser.add_argument("--python-flags", default="", help='e.g. "-I -S", as in ExecStart')
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    args.client_cert = False

    with tempfile.TemporaryDirectory(prefix="agent-cpu-") as tmp:
        work = Path(tmp)
        cmd = agent_command(args, work)
        data = work / "slice.csv"
        write_slice(data, 2000)
        with mosquitto(work, args.tls) as port:
            procs = []
            for i in range(args.agents):
                env = agent_env(
                    args,
                    work,
                    port,
                    DEVICE_NAME=f"bench-{i:04d}",
                    DEVICE_ID=f"02:42:ac:12:{i // 256:02x}:{i % 256:02x}",
                    DATASET_PATH=str(data),
                    STATE_DIR=str(work / f"state-{i}"),
                    PUBLISH_INTERVAL=str(args.interval),
                    LOG_LEVEL="WARNING",
                )
                procs.append(subprocess.Popen(cmd, env=env))
            try:
                time.sleep(args.warmup)
                t0 = time.monotonic()
                before = [sample(p.pid) for p in procs]
                time.sleep(args.duration)
                after = [sample(p.pid) for p in procs]
                elapsed = time.monotonic() - t0
            finally:
                codes = stop(procs)

    tls = "TLS" if args.tls else "plain TCP"
    print(f"{' '.join(cmd)}, {tls}, {args.agents} agents, interval {args.interval} s, "
          f"{elapsed:.0f} s window after {args.warmup:.0f} s warm-up")  # fmt: skip
    ticks = [a[0] - b[0] for a, b in zip(after, before)]
    ns = [a[1] - b[1] for a, b in zip(after, before)] if before[0][1] >= 0 else []
    wakes = [a[2] - b[2] for a, b in zip(after, before)]
    n = len(procs)
    by_ticks = 100 * sum(ticks) / TICK / elapsed / n
    print(f"  utime+stime: {sum(ticks)} ticks in all -> {by_ticks:.4f}% of a core per agent")
    if ns:
        pct = [100 * x / 1e9 / elapsed for x in ns]
        print(
            f"  on-CPU time (schedstat): {sum(pct) / n:.4f}% of a core per agent "
            f"(min {min(pct):.4f}, max {max(pct):.4f}); "
            f"{sum(ns) / n / 1e3 / elapsed * args.interval:.0f} us per interval"
        )
    # Each sleep in select() and each fsync of the state file is one voluntary switch.
    print(
        f"  context switches (wake-ups + fsync waits): {sum(wakes) / n / elapsed:.2f}/s per agent"
    )
    print(f"  exit codes {sorted(set(codes))}")
    return 0 if set(codes) == {0} else 1


if __name__ == "__main__":
    sys.exit(main())
