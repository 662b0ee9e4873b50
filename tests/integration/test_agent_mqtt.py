"""edge-agent against a real Mosquitto: fleet check, restarts without gaps, broker restarts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pytest
from support.polling import wait_until

if TYPE_CHECKING:  # fixtures come from conftest.py; only their types are needed here
    from conftest import Broker, Collector

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HEADER = '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n'

AgentFactory = Callable[..., "subprocess.Popen[bytes]"]


def write_slice(path: Path, rows: int, source: str = "b8:27:eb:bf:9d:51") -> Path:
    lines = [HEADER]
    for i in range(rows):
        ts = 1.5945120943859746e9 + 3.7 * i
        lines.append(
            f'"{ts:.16E}","{source}","0.00{4 + i % 5}","{50 + i % 7}.0",'
            f'"{"true" if i % 4 == 0 else "false"}","0.0076","false","0.0204","22.{i % 10}"\n'
        )
    path.write_text("".join(lines))
    return path


def device_id(n: int) -> str:
    return f"02:42:ac:11:00:{n:02x}"


@pytest.fixture
def start_agent(tmp_path: Path, mosquitto: Broker) -> Iterator[AgentFactory]:
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT / "agent")}
    for key in ("MQTT_BROKER", "MQTT_PORT", "DATASET_PATH", "STATE_DIR", "DEVICE_ID"):
        env.pop(key, None)

    def start(n: int, *extra: str, rows: int = 50) -> subprocess.Popen[bytes]:
        data = tmp_path / f"device-{n:04d}.csv"
        if not data.exists():
            write_slice(data, rows)
        log = open(tmp_path / f"agent-{n}.log", "ab")  # noqa: SIM115 - handed to the child
        argv = [
            sys.executable, "-m", "edge_agent",
            "--broker", mosquitto.host, "--port", str(mosquitto.port),
            "--device-id", device_id(n), "--device-name", f"pi-{n:04d}",
            "--dataset", str(data), "--state-dir", str(tmp_path / f"state-{n}"),
            "--rate", "20", "--log-level", "DEBUG", *extra,
        ]  # fmt: skip
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return proc.wait(15)


def saved_seq(tmp_path: Path, n: int) -> int:
    return int(json.loads((tmp_path / f"state-{n}" / "state.json").read_text())["seq"])


def test_three_agents_reach_the_consumer(
    start_agent: AgentFactory, mosquitto: Broker, collector: Collector
) -> None:
    agents = [start_agent(n) for n in (1, 2, 3)]
    ids = [device_id(n) for n in (1, 2, 3)]
    assert wait_until(lambda: all(collector.count(d) >= 5 for d in ids), 20), collector.snapshot()
    assert wait_until(lambda: all(collector.status.get(d) == "online" for d in ids), 5)

    if shutil.which("mosquitto_sub"):  # independent check of the retained status topics
        out = subprocess.run(
            ["mosquitto_sub", "-h", mosquitto.host, "-p", str(mosquitto.port), "-V", "mqttv5",
             "-t", "iot/status/#", "-v", "-C", "3", "-W", "10"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert sorted(out.split()) == sorted([f"iot/status/{d}" for d in ids] + ["online"] * 3)

    for proc in agents:  # without TLS the agent never maps OpenSSL (~5 MB of RSS)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "libssl" not in maps and "libcrypto" not in maps

    consumer = subprocess.run(
        [sys.executable, "-c", "import sys; from edge_consumer.cli import main; sys.exit(main())",
         "--broker", mosquitto.host, "--port", str(mosquitto.port), "--expect", "3",
         "--min-messages", "5", "--timeout", "30", "--format", "none"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert consumer.returncode == 0, consumer.stdout + consumer.stderr
    for proc in agents:
        assert stop(proc) == 0
    assert all(collector.status.get(d) == "offline" for d in ids) or wait_until(
        lambda: all(collector.status.get(d) == "offline" for d in ids), 5
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_agent_restart_resumes_seq_without_gaps(
    sig: int, start_agent: AgentFactory, collector: Collector, tmp_path: Path
) -> None:
    dev = device_id(1)
    proc = start_agent(1, rows=7)  # small slice: the run wraps around it several times
    assert wait_until(lambda: collector.count(dev) >= 30, 20)
    code = stop(proc, sig)
    if sig == signal.SIGTERM:
        assert code == 0
        received = max(collector.snapshot()[dev])
        assert saved_seq(tmp_path, 1) == received + 1  # everything in flight was flushed
        assert wait_until(lambda: collector.status.get(dev) == "offline", 5)
    else:
        assert wait_until(lambda: collector.status.get(dev) == "offline", 5)  # the will
    before = collector.count(dev)

    proc = start_agent(1, rows=7)
    assert wait_until(lambda: collector.count(dev) >= before + 30, 20)
    assert stop(proc) == 0
    final = saved_seq(tmp_path, 1)
    assert wait_until(lambda: not collector.missing(dev, final), 10), collector.missing(dev, final)
    seqs = collector.snapshot()[dev]
    assert max(seqs) == final - 1
    if sig == signal.SIGTERM:
        assert len(seqs) == len(set(seqs)) == final  # graceful: no duplicates either


def test_agent_killed_while_the_broker_stalls_resends_what_was_queued_or_in_flight(
    start_agent: AgentFactory, collector: Collector, mosquitto: Broker, tmp_path: Path
) -> None:
    """The saved watermark must stay at the oldest reading not yet acknowledged.

    A stalled broker (SIGSTOP) acknowledges nothing, so the agent fills its in-flight window and
    then queues. Killed then, a restarted agent must send those readings again: a watermark that
    moved past queued or in-flight readings shows up as a gap here.
    """
    dev = device_id(1)
    proc = start_agent(1, rows=7)
    assert wait_until(lambda: collector.count(dev) >= 20, 20)
    assert mosquitto.proc is not None
    mosquitto.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(4)  # 20 readings/s: the in-flight window fills, then the queue grows
        stalled_at = saved_seq(tmp_path, 1)
        assert stop(proc, signal.SIGKILL) != 0
    finally:
        mosquitto.proc.send_signal(signal.SIGCONT)
    # The saved position is nothing beyond what the broker acknowledged (and so delivered).
    assert wait_until(lambda: stalled_at <= max(collector.snapshot()[dev]) + 1, 10)

    proc = start_agent(1, rows=7)
    assert wait_until(lambda: collector.count(dev) >= stalled_at + 100, 30)
    assert stop(proc) == 0
    final = saved_seq(tmp_path, 1)
    assert wait_until(lambda: not collector.missing(dev, final), 10), collector.missing(dev, final)


def test_broker_restart_leaves_no_gaps(
    start_agent: AgentFactory, mosquitto: Broker, collector: Collector, tmp_path: Path
) -> None:
    agents = {n: start_agent(n) for n in (1, 2)}
    ids = {n: device_id(n) for n in agents}
    assert wait_until(lambda: all(collector.count(d) >= 20 for d in ids.values()), 20)
    for _ in range(2):
        mosquitto.stop()
        before = {d: collector.count(d) for d in ids.values()}
        time.sleep(2.0)  # agents keep producing into their queues meanwhile
        mosquitto.start()
        assert wait_until(
            lambda b=before: all(collector.count(d) >= b[d] + 40 for d in ids.values()), 30
        ), collector.snapshot()
    for n, proc in agents.items():
        assert stop(proc) == 0
        final = saved_seq(tmp_path, n)
        assert final >= 80
        dev = ids[n]
        complete = wait_until(lambda d=dev, f=final: not collector.missing(d, f), 10)
        assert complete, collector.missing(dev, final)
    logs = (tmp_path / "agent-1.log").read_text()
    assert "connected to" in logs and "disconnected from broker" in logs


@pytest.mark.parametrize("qos", ["0", "1", "2"])
def test_count_completes_at_every_qos(
    qos: str, start_agent: AgentFactory, collector: Collector, tmp_path: Path
) -> None:
    proc = start_agent(1, "--qos", qos, "--count", "30", "--rate", "100")
    assert proc.wait(30) == 0
    assert saved_seq(tmp_path, 1) == 30
    assert wait_until(lambda: collector.count(device_id(1)) >= 30, 5)
    assert sorted(collector.snapshot()[device_id(1)]) == list(range(30))
