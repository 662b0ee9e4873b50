"""Consumer throughput: flood a private Mosquitto with QoS 1 telemetry, check exact accounting.

Starts /usr/sbin/mosquitto on a free 127.0.0.1 port and `edge-consumer --format none` in a
subprocess; one `mosquitto_pub -l` per device publishes pre-sequenced payloads at QoS 1.
Two phases, each must account exactly (received == sent, zero gaps/duplicates/invalid):

  live:    the consumer is subscribed while the publishers flood. On a small machine the
           publishers and the broker share the CPU with it, so this is an end-to-end rate.
  backlog: the consumer (--persistent) is away while the broker queues the flood, then
           drains it: the consumer's own receive capacity.

The rate is received / (last - first message seen by the consumer). Also times the
validation + accounting hot path alone, without MQTT.

    python bench/consumer_throughput.py [--messages 200000] [--devices 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MOSQUITTO = os.environ.get("MOSQUITTO", "/usr/sbin/mosquitto")
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
TARGET = 20_000  # msg/s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"mosquitto did not listen on {port}")


def mac(n: int) -> str:
    return "02:42:ac:" + ":".join(f"{b:02x}" for b in n.to_bytes(3, "big"))


def fast_payload(device_id: str, name: str, seq: int, ts: float) -> str:
    """Same bytes shape as payload(), built by formatting: keeps the feeders off the CPU."""
    return (
        f'{{"device_id":"{device_id}","device_name":"{name}","ts":{ts!r},"seq":{seq},'
        f'"data":{{"temp":22.7,"humidity":51.0,"co":0.004956,"lpg":0.007651,"smoke":0.020411,'
        f'"light":{"true" if seq % 2 else "false"},"motion":false}},'
        '"source":{"device":"b8:27:eb:bf:9d:51","ts":1594512094.3859746},'
        '"stats":{"overflow":0,"reconnects":0,"skipped_rows":0}}'
    )


def payload(device_id: str, name: str, seq: int, ts: float) -> str:
    return json.dumps(
        {
            "device_id": device_id,
            "device_name": name,
            "ts": ts,
            "seq": seq,
            "data": {
                "temp": 22.7 + seq % 10 / 10,
                "humidity": 51.0,
                "co": 0.004956,
                "lpg": 0.007651,
                "smoke": 0.020411,
                "light": seq % 2 == 0,
                "motion": False,
            },
            "source": {"device": "b8:27:eb:bf:9d:51", "ts": 1594512094.3859746},
            "stats": {"overflow": 0, "reconnects": 0, "skipped_rows": 0},
        },
        separators=(",", ":"),
    )


def hot_path(n: int = 100_000) -> float:
    """Validation + accounting alone, messages per second."""
    from edge_consumer.accounting import Accounting

    acc = Accounting()
    topic = "iot/telemetry/" + mac(1)
    msgs = [payload(mac(1), "pi-0001", s, time.time()).encode() for s in range(n)]
    handle = acc.handle
    start = time.perf_counter()
    now = time.time()
    for body in msgs:
        handle(topic, body, now)
    elapsed = time.perf_counter() - start
    assert acc.valid == n and acc.devices[mac(1)].gaps == 0
    return n / elapsed


class Bench:
    def __init__(self, work: Path, devices: int, per_device: int, timeout: float) -> None:
        self.work = work
        self.devices = devices
        self.per_device = per_device
        self.timeout = timeout
        self.port = free_port()
        self.procs: list[subprocess.Popen[Any]] = []

    def start_broker(self) -> None:
        conf = self.work / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # The flood must not be throttled or dropped by the broker itself.
            "max_inflight_messages 0\n"
            "max_queued_messages 100000000\n"
            "max_queued_bytes 0\n"
            "log_type error\n"
        )
        self.procs.append(subprocess.Popen([MOSQUITTO, "-c", str(conf)]))
        wait_port(self.port)

    def consumer(self, summary: Path, *extra: str) -> subprocess.Popen[str]:
        """Start edge-consumer and return once it is connected and subscribed."""
        cmd = [
            sys.executable,
            "-m",
            "edge_consumer",
            "--broker",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--format",
            "none",
            "--summary-json",
            str(summary),
            "--log-level",
            "INFO",
            *extra,
        ]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stderr is not None
        lines: list[str] = []
        for line in proc.stderr:
            lines.append(line)
            if "connected to" in line:
                break
        else:
            raise SystemExit("consumer exited before connecting:\n" + "".join(lines))
        # Drain stderr so the consumer never blocks on a full pipe.
        threading.Thread(target=lambda: lines.extend(proc.stderr or []), daemon=True).start()
        time.sleep(0.5)  # let the SUBACK land
        return proc

    def publish(self) -> float:
        """One mosquitto_pub -l per device; returns the seconds until all have exited."""
        pubs = []
        start = time.perf_counter()
        for d in range(1, self.devices + 1):
            cmd = [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(self.port), "-q", "1"]
            cmd += ["-V", "mqttv5", "-i", f"bench-pub-{d}", "-t", f"iot/telemetry/{mac(d)}", "-l"]
            pub = subprocess.Popen(cmd, stdin=subprocess.PIPE)
            self.procs.append(pub)
            pubs.append((pub, mac(d), f"pi-{d:04d}"))

        def feed(pub: subprocess.Popen[bytes], device_id: str, name: str) -> None:
            assert pub.stdin is not None
            for first in range(0, self.per_device, 500):
                last = min(first + 500, self.per_device)
                now = time.time()
                lines = [fast_payload(device_id, name, s, now) for s in range(first, last)]
                pub.stdin.write(("\n".join(lines) + "\n").encode())
            pub.stdin.close()

        feeders = [threading.Thread(target=feed, args=p) for p in pubs]
        for f in feeders:
            f.start()
        for f in feeders:
            f.join()
        for pub, _, _ in pubs:
            pub.wait()
        return time.perf_counter() - start

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()

    def until_done(self) -> list[str]:
        return ["--expect", str(self.devices), "--min-messages", str(self.per_device)]

    def live(self) -> dict[str, Any]:
        summary = self.work / "live.json"
        consumer = self.consumer(summary, *self.until_done(), "--timeout", str(self.timeout))
        publish_s = self.publish()
        rc = consumer.wait(timeout=self.timeout + 30)
        return {"phase": "live", "rc": rc, "publish_s": publish_s, **load(summary)}

    def backlog(self) -> dict[str, Any]:
        summary = self.work / "backlog.json"
        session = ["--persistent", "--client-id", "bench-consumer"]
        # First visit creates the session and its QoS 1 subscriptions, then leaves.
        self.consumer(self.work / "first.json", *session, "--duration", "0.5").wait(30)
        publish_s = self.publish()
        args = [*session, *self.until_done(), "--timeout", str(self.timeout)]
        consumer = self.consumer(summary, *args)
        rc = consumer.wait(timeout=self.timeout + 30)
        return {"phase": "backlog", "rc": rc, "publish_s": publish_s, **load(summary)}


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def report(result: dict[str, Any], total: int) -> tuple[bool, float]:
    t = result["totals"]
    span = t["message_span_s"] or 0.0
    rate = t["received"] / span if span > 0 else 0.0
    exact = (
        t["received"] == total
        and t["valid"] == total
        and t["gaps"] == 0
        and t["duplicates"] == 0
        and t["invalid"] == 0
    )
    print(
        f"[{result['phase']}] published {total:,} QoS 1 messages in {result['publish_s']:.2f} s;"
        f" consumer received={t['received']:,} valid={t['valid']:,} invalid={t['invalid']}"
        f" gaps={t['gaps']} duplicates={t['duplicates']} devices={t['devices']}"
        f" exit={result['rc']}"
    )
    cpu = t.get("cpu_s") or 0.0
    per_cpu = t["received"] / cpu if cpu > 0 else 0.0
    print(
        f"[{result['phase']}] consumer rate: {rate:,.0f} msg/s over {span:.2f} s"
        f" (target {TARGET:,}); accounting exact: {'yes' if exact else 'NO'}"
    )
    print(
        f"[{result['phase']}] consumer CPU: {cpu:.2f} s in total (start-up included),"
        f" {per_cpu:,.0f} msg per CPU-second"
    )
    if result["phase"] == "live":
        print(
            f"[live] latency publish->consumer p50={t['latency_p50_ms']} ms"
            f" p99={t['latency_p99_ms']} ms (includes queueing behind the flood)"
        )
    return exact, rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--phase", choices=("live", "backlog", "both"), default="both")
    args = ap.parse_args()
    per_device = args.messages // args.devices
    total = per_device * args.devices

    print(f"hot path (validate + account, no MQTT): {hot_path():,.0f} msg/s")
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    work = Path(tempfile.mkdtemp(prefix="consumer-bench-"))
    ok = True
    rates = []
    try:
        for phase in ("live", "backlog"):
            if args.phase not in (phase, "both"):
                continue
            bench = Bench(work, args.devices, per_device, args.timeout)
            try:
                bench.start_broker()
                result = bench.live() if phase == "live" else bench.backlog()
            finally:
                bench.stop_all()
            exact, rate = report(result, total)
            ok = ok and exact
            rates.append(rate)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not ok:
        return 1
    return 0 if max(rates) >= TARGET else 3


if __name__ == "__main__":
    sys.exit(main())
