"""The consumer as the monitor service (a subprocess with --http-port) and real agents, for the
metrics and dashboard integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Optional

from prometheus_client.parser import text_string_to_metric_families
from support.fleet import ROOT
from support.polling import wait_until
from support.ports import free_port

HEADER = '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n'


class MonitorService:
    """`edge-consumer ... --http-port P` as the systemd unit runs it, on loopback."""

    def __init__(self, broker: Any, workdir: Path, *extra: str) -> None:
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log = workdir / f"consumer-{self.http_port}.log"
        cmd = [
            sys.executable, "-m", "edge_consumer",
            "--broker", broker.host, "--port", str(broker.port),
            "--persistent", "--client-id", f"edge-monitor-{self.http_port}",
            "--format", "none", "--http-port", str(self.http_port), "--log-level", "INFO",
            *extra,
        ]  # fmt: skip
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        if not wait_until(self._ready, 20, 0.1):
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"the monitor did not come up:\n{self.log.read_text()}")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the monitor exited:\n{self.log.read_text()}")
        try:
            return bool(self.get_json("/healthz")["connected"])
        except OSError:
            return False

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return str(response.read().decode())

    def get_json(self, path: str) -> Any:
        return json.loads(self.get(path))

    def metrics(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """sample name -> {sorted label pairs: value}, read with prometheus_client's parser."""
        out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(self.get("/metrics")):
            for sample in family.samples:
                key = tuple(sorted(sample.labels.items()))
                out.setdefault(sample.name, {})[key] = sample.value
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def write_slice(
    path: Path,
    rows: int = 40,
    source: str = "b8:27:eb:bf:9d:51",
    failed_read_at: Optional[int] = None,
) -> Path:
    """A small dataset slice in the published CSV format, with readings that move.

    `failed_read_at`: that row is a DHT's failed read as the real dataset has them (temp 0.0,
    humidity 1.1): physically impossible, so the monitor's detectors flag it at once."""
    lines = [HEADER]
    for i in range(rows):
        ts = 1.5945120943859746e9 + 3.7 * i
        humidity, temp = f"{50 + i % 7}.0", f"22.{i % 10}"
        if i == failed_read_at:
            humidity, temp = "1.1", "0.0"
        lines.append(
            f'"{ts:.16E}","{source}","0.00{4 + i % 5}","{humidity}",'
            f'"{"true" if i % 4 == 0 else "false"}","0.0076","{"true" if i % 9 == 0 else "false"}",'
            f'"0.0204","{temp}"\n'
        )
    path.write_text("".join(lines))
    return path


def start_agent(
    broker: Any,
    workdir: Path,
    device_id: str,
    name: str,
    *extra: str,
    failed_read_at: Optional[int] = None,
) -> subprocess.Popen[bytes]:
    """A real edge-agent publishing every 0.5 s (its own slice, state dir and log); with
    `failed_read_at`, that row of its slice is an impossible reading (see write_slice)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "agent")}
    for key in ("MQTT_BROKER", "MQTT_PORT", "DATASET_PATH", "STATE_DIR", "DEVICE_ID"):
        env.pop(key, None)
    data = write_slice(workdir / f"{name}.csv", failed_read_at=failed_read_at)
    argv = [
        sys.executable, "-m", "edge_agent",
        "--broker", broker.host, "--port", str(broker.port),
        "--device-id", device_id, "--device-name", name, "--client-id", f"it-{name}",
        "--dataset", str(data), "--state-dir", str(workdir / f"state-{name}"),
        "--interval", "0.5", "--log-level", "INFO", *extra,
    ]  # fmt: skip
    with open(workdir / f"{name}.log", "ab") as log:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
