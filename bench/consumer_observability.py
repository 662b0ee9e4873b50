"""Does the monitor service slow ingestion? Consumer msg/s with /metrics + dashboard on vs off.

Reuses consumer_throughput.py's private Mosquitto, flood publishers and exact-accounting check.
"on" runs the consumer with --http-port while one client scrapes /metrics every second and one
dashboard client stays connected to /events (a fleet snapshot a second); "off" runs it without
the server. Each round runs off then on, back to back, so that the load other processes put on
a shared machine hits both alike; the verdict is the median of the rounds' on/off ratios.
Target: "on" at >= 90 % of "off". Also printed: messages per consumer CPU-second (start-up
excluded in backlog), which a busy machine disturbs less than wall-clock rates.

  backlog (default): the consumer drains a queued flood, its own receive capacity.
  live:              the consumer is subscribed while the publishers flood (end to end).

    python bench/consumer_observability.py [--messages 200000] [--devices 100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from consumer_throughput import Bench, free_port, load, report

TARGET = 0.90


class MonitoredBench(Bench):
    """The same bench, every consumer started with extra flags (here: the HTTP server)."""

    def __init__(self, *args: Any, extra: tuple[str, ...] = ()) -> None:
        super().__init__(*args)
        self.extra = extra

    def consumer(self, summary: Path, *extra: str) -> Any:
        return super().consumer(summary, *extra, *self.extra)


class Viewers:
    """A Prometheus-like scraper (GET /metrics every second) and one open /events stream.

    Both retry until the server answers, so they are in place before the flood arrives."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.stop = threading.Event()
        self.scrapes = 0
        self.scrape_bytes = 0
        self.events = 0
        self.threads = [
            threading.Thread(target=self._scrape, daemon=True),
            threading.Thread(target=self._listen, daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(5)

    def _scrape(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
                    self.scrape_bytes = len(response.read())
                    self.scrapes += 1
            except OSError:
                pass
            self.stop.wait(max(0.05, 1.0 - (time.monotonic() - started)))

    def _listen(self) -> None:
        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url + "/events", timeout=5) as stream:
                    for line in stream:
                        if line.startswith(b"data: "):
                            self.events += 1
                        if self.stop.is_set():
                            return
            except OSError:
                self.stop.wait(0.05)


def one_round(work: Path, args: argparse.Namespace, monitor: bool) -> dict[str, Any]:
    per_device = args.messages // args.devices
    extra: tuple[str, ...] = ()
    viewers = None
    if monitor:
        port = free_port()
        extra = ("--http-port", str(port))
        viewers = Viewers(port)
        viewers.start()
    work.mkdir(parents=True)
    bench = MonitoredBench(work, args.devices, per_device, args.timeout, extra=extra)
    try:
        bench.start_broker()
        result = bench.live() if args.phase == "live" else bench.backlog()
    finally:
        bench.stop_all()
        if viewers is not None:
            viewers.close()
    result["phase"] = f"{args.phase} {'on ' if monitor else 'off'}"
    exact, rate = report(result, per_device * args.devices)
    if not exact:
        raise SystemExit("accounting was not exact: the comparison would be meaningless")
    totals = result["totals"]
    cpu = totals["cpu_s"]
    if args.phase == "backlog":  # the same flags for 0.5 s: what start-up and idling cost
        cpu -= load(work / "first.json")["totals"]["cpu_s"]
    if viewers is not None:
        print(
            f"[{result['phase']}] viewers: {viewers.scrapes} scrapes of /metrics"
            f" ({viewers.scrape_bytes:,} bytes each), {viewers.events} /events snapshots"
        )
    return {"rate": rate, "per_cpu": totals["received"] / max(cpu, 1e-9)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of (off, on)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--phase", choices=("backlog", "live"), default="backlog")
    args = ap.parse_args()

    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="consumer-observability-"))
    rounds: list[tuple[dict[str, Any], dict[str, Any]]] = []
    try:
        for n in range(args.rounds):
            off = one_round(work / f"{n}-off", args, False)
            on = one_round(work / f"{n}-on", args, True)
            rounds.append((off, on))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def median(key: str, i: int) -> float:
        return statistics.median(r[i][key] for r in rounds)

    # Each round's on/off pair ran back to back, so the pair's ratio cancels most of the load
    # that other processes put on a shared machine; the median of those ratios is the verdict.
    wall = statistics.median(on["rate"] / off["rate"] for off, on in rounds)
    cpu = statistics.median(on["per_cpu"] / off["per_cpu"] for off, on in rounds)
    print()
    print(f"{args.phase}: {args.messages:,} messages, {args.devices} devices, {args.rounds} rounds")
    for label, i in (("off", 0), ("on ", 1)):
        rates = ", ".join(f"{r[i]['rate']:,.0f}" for r in rounds)
        print(f"  {label}: {median('rate', i):,.0f} msg/s median (rounds: {rates});"
              f" {median('per_cpu', i):,.0f} msg per consumer CPU-second")  # fmt: skip
    print(f"  on / off, median of paired rounds: msg/s {wall:.1%}, msg per CPU-second {cpu:.1%}")
    ok = wall >= TARGET
    print(f"  target: msg/s on >= {TARGET:.0%} of off: {'ok' if ok else 'BELOW TARGET'}")
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
