"""What a /metrics scrape (and a dashboard snapshot) costs at fleet scale.

Feeds Accounting directly with realistic agent payloads (edge_agent.protocol.telemetry) from
--devices simulated devices, all online, a few with gaps, duplicates and invalid messages, then
times prometheus_client's generate_latest over the monitor's registry (median of --repeat) and
prints the scrape's time, size and series count; the same for the dashboard's /events snapshot.

    python bench/metrics_scrape.py [--devices 1000] [--messages 20] [--repeat 20]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from typing import Any, Callable

from edge_agent.protocol import telemetry
from edge_consumer.accounting import Accounting
from edge_consumer.history import RingHistory
from edge_consumer.metrics import build_registry
from edge_consumer.monitor import DeviceInfo, Monitor
from prometheus_client import generate_latest

SOURCES = ("00:0f:00:70:91:0a", "1c:bf:ce:15:ec:4d", "b8:27:eb:bf:9d:51")


def mac(n: int) -> str:
    return "0a:ed:9e:" + ":".join(f"{b:02x}" for b in n.to_bytes(3, "big"))


def feed(devices: int, messages: int, now: float) -> Monitor:
    rng = random.Random(0)
    acc = Accounting()
    history = RingHistory()
    acc.recorder = history.record
    info = {}
    for n in range(1, devices + 1):
        device_id, name = mac(n), f"pi-{n:04d}"
        info[device_id] = DeviceInfo(name, "arm64" if n % 4 == 0 else "amd64", f"pi-host-{n:04d}")
        acc.handle_status(f"iot/status/{device_id}", b"online", now - messages * 5)
        seqs = list(range(messages))
        if n % 50 == 0:
            del seqs[3]  # a gap
        if n % 70 == 0:
            seqs.insert(5, 4)  # a duplicate
        for i, seq in enumerate(seqs):
            ts = now - (len(seqs) - i) * 5.0  # the agent's default 5 s interval
            data = {
                "temp": round(rng.uniform(19, 30), 1),
                "humidity": round(rng.uniform(40, 75), 1),
                "co": rng.uniform(0.001, 0.012),
                "lpg": rng.uniform(0.002, 0.016),
                "smoke": rng.uniform(0.005, 0.045),
                "light": rng.random() < 0.3,
                "motion": rng.random() < 0.05,
            }
            source = {"device": SOURCES[n % 3], "ts": ts - 1.3e8}
            stats = {"overflow": 0, "reconnects": n % 3, "skipped_rows": 0}
            body = telemetry(device_id, name, ts, seq, data, source, stats, epoch=1000 + n)
            acc.handle(f"iot/telemetry/{device_id}", body, ts + rng.uniform(0.002, 0.05))
        if n % 100 == 0:
            acc.handle(f"iot/telemetry/{device_id}", b"not json", now)
    return Monitor(acc, history, device_info=info, connected=lambda: True, clock=lambda: now)


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Median wall and CPU seconds of `repeat` calls, and the last result. On a busy machine
    the CPU time is the steadier figure: it leaves out the time other processes had."""
    wall, cpu = [], []
    result = None
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.thread_time()
        result = fn()
        wall.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)
    return statistics.median(wall), statistics.median(cpu), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=20, help="per device")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()

    now = time.time()
    started = time.perf_counter()
    mon = feed(args.devices, args.messages, now)
    fed = time.perf_counter() - started
    registry = build_registry(mon)
    scrape_s, scrape_cpu, body = timed(lambda: generate_latest(registry), args.repeat)
    series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    snapshot_s, snapshot_cpu, snap = timed(
        lambda: json.dumps(mon.snapshot(), separators=(",", ":")).encode(), args.repeat
    )

    online = sum(1 for d in mon.acc.devices.values() if mon.online(d, now))
    print(f"fed {mon.acc.received:,} messages from {args.devices:,} devices in {fed:.2f} s;"
          f" {online:,} online")  # fmt: skip
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    print(f"/metrics scrape (generate_latest, median of {args.repeat}): {scrape_s * 1000:.0f} ms"
          f" ({scrape_cpu * 1000:.0f} ms CPU), {len(body):,} bytes, {series:,} series")  # fmt: skip
    print(f"/events snapshot (JSON, median of {args.repeat}): {snapshot_s * 1000:.0f} ms"
          f" ({snapshot_cpu * 1000:.0f} ms CPU), {len(snap):,} bytes")  # fmt: skip
    return 0 if online == args.devices else 1


if __name__ == "__main__":
    sys.exit(main())
