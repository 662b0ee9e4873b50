"""Watching a deployed fleet through the real consumer, and reading the broker's journal.

`FleetWatch` runs `edge-consumer` as a subprocess with one persistent MQTT session for the
whole module: while it is stopped, the broker queues telemetry for it, so consecutive windows
together cover every reading. The consumer's own `--summary-json` is the accounting each test
asserts on; the JSON lines it prints give live progress (latest seq and production time).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from support.fleet import BIN, docker
from support.polling import wait_until

CLIENT_ID = "fault-watch"
CATCH_UP_TIMEOUT = 120.0
POLL = 0.5  # s between checks; most of them run docker exec

# What each fault test measured; conftest prints it at the end of the run.
RESULTS: list[dict[str, Any]] = []


@dataclass
class DeviceProgress:
    ts: float = 0.0  # production time of the newest reading seen
    seq: int = 0  # the newest seq seen
    overflow: int = 0  # the agent's own overflow counter, from its latest message


@dataclass
class Window:
    """What the consumer accounted for between one start and stop."""

    summary: dict[str, Any]

    @property
    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["device_id"]: d for d in self.summary["devices"] if d["received"]}


@dataclass
class FleetWatch:
    port: int
    ca: Path
    password_file: Path
    workdir: Path
    proc: Optional[subprocess.Popen[str]] = None
    progress: dict[str, DeviceProgress] = field(default_factory=dict)
    windows: int = 0
    _reader: Optional[threading.Thread] = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.windows += 1
        summary = self.workdir / f"window-{self.windows}.json"
        command = [
            str(BIN / "edge-consumer"),
            "--broker", "127.0.0.1",
            "--port", str(self.port),
            "--tls-ca", str(self.ca),
            "--username", "consumer",
            "--password-file", str(self.password_file),
            "--client-id", CLIENT_ID,
            "--persistent",
            "--format", "json",
            "--summary-json", str(summary),
            "--log-level", "INFO",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=(self.workdir / f"window-{self.windows}.log").open("w"),
            text=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            record = json.loads(line)
            if record["type"] != "telemetry":
                continue
            message = record["message"]
            with self._lock:
                progress = self.progress.setdefault(message["device_id"], DeviceProgress())
                progress.ts = max(progress.ts, message["ts"])
                progress.seq = max(progress.seq, message["seq"])
                progress.overflow = message["stats"]["overflow"]

    def stop(self) -> Window:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        if self._reader is not None:
            self._reader.join(timeout=10)
        path = self.workdir / f"window-{self.windows}.json"
        return Window(json.loads(path.read_text()))

    def kill(self) -> None:
        """Stop the consumer without reading its summary, if it runs (a fixture's clean-up)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def snapshot(self) -> dict[str, DeviceProgress]:
        with self._lock:
            return {k: DeviceProgress(**vars(v)) for k, v in self.progress.items()}

    def newest_seqs(self) -> dict[str, int]:
        """Device ID -> the newest seq the watch has seen from it."""
        return {device: progress.seq for device, progress in self.snapshot().items()}

    def caught_up(self, devices: set[str], since: float) -> bool:
        """Every device has delivered a reading produced after `since`."""
        progress = self.snapshot()
        return all(d in progress and progress[d].ts > since for d in devices)


class SeqLedger:
    """The union, per device, of the seqs the consumer accounted for in every window.

    A window alone can show a false hole: after a broker crash, mosquitto may resend old
    messages from its persistence file, which the previous window already counted. Over the
    whole test run, only readings that never reached the consumer remain missing.
    """

    def __init__(self) -> None:
        self.runs: dict[str, list[tuple[int, int]]] = {}  # device ID -> sorted inclusive runs

    def add(self, device_id: str, record: dict[str, Any]) -> None:
        holes = [tuple(hole) for hole in record["missing_ranges"]]
        listed = sum(last - first + 1 for first, last in holes)
        assert listed == record["gaps"], f"{device_id}: the consumer listed only some holes"
        runs, start = [], record["seq_min"]
        for first, last in holes:
            runs.append((start, first - 1))
            start = last + 1
        runs.append((start, record["seq_max"]))
        merged: list[tuple[int, int]] = []
        for first, last in sorted(self.runs.get(device_id, []) + runs):
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        self.runs[device_id] = merged

    def holes(self, device_id: str) -> list[tuple[int, int]]:
        runs = self.runs.get(device_id, [])
        return [(a[1] + 1, b[0] - 1) for a, b in zip(runs, runs[1:])]

    def missing(self, device_id: str) -> int:
        return sum(last - first + 1 for first, last in self.holes(device_id))


@dataclass
class WatchedFleet:
    """A deployed fleet, its consumer session and the seq accounting across its windows.

    `ids` maps each device name (its MQTT user) to its device ID. Each fault test opens a
    window, injects its fault, waits until every device has caught up, and closes the window,
    which checks the consumer's accounting: every seq arrived, except exactly the readings the
    agents reported dropping.
    """

    watch: FleetWatch
    ids: dict[str, str]  # device name -> device ID (MAC)
    names: dict[str, str] = field(default_factory=dict)  # device ID -> device name
    session_saved: float = 0.0  # when the watch's session first reached the broker's disk
    ledger: SeqLedger = field(default_factory=SeqLedger)
    dropped: dict[str, int] = field(default_factory=dict)  # device ID -> readings lost on purpose

    def set_ids(self, ids: dict[str, str]) -> None:
        self.ids = dict(ids)
        self.names = {mac: name for name, mac in self.ids.items()}

    def open_window(self) -> float:
        """Start the consumer and wait until every device is streaming; returns the start time."""
        if self.watch.proc is not None and self.watch.proc.poll() is None:
            # A test failed with its window open: close it, keep its accounting (so the
            # ledger has no false holes), and let this test stand on its own.
            for mac, record in self.watch.stop().devices.items():
                self.ledger.add(mac, record)
        started = time.time()
        self.watch.start()
        assert wait_until(
            lambda: self.watch.caught_up(set(self.ids.values()), started), 60, POLL
        ), "not every device is publishing before the fault"
        if not self.session_saved:
            self.session_saved = started
        return started

    def close_window(self, test: str, recovery_s: float) -> Window:
        window = self.watch.stop()
        self.check_window(window)
        totals = window.summary["totals"]
        RESULTS.append(
            {
                "test": test,
                "recovery_s": round(recovery_s, 1),
                "missing": sum(self.ledger.missing(mac) for mac in self.ids.values()),
                "duplicates": totals["duplicates"],
                "overflow": totals["agent_overflow"],
                "reconnects": totals["status_reconnects"],
                "messages": totals["valid"],
            }
        )
        return window

    def check_window(self, window: Window) -> None:
        """The consumer's accounting, joined with the earlier windows': every seq arrived,
        except exactly the readings the agents reported dropping."""
        devices = window.devices
        assert set(devices) == set(self.ids.values()), "some devices sent nothing in the window"
        assert window.summary["totals"]["invalid"] == 0
        problems = []
        for mac, record in devices.items():
            self.ledger.add(mac, record)
            if self.ledger.missing(mac) != self.dropped.get(mac, 0):
                problems.append(
                    f"{self.names[mac]}: missing {self.ledger.holes(mac)},"
                    f" agent reported {self.dropped.get(mac, 0)} dropped"
                )
        assert not problems, "\n".join(problems)

    def wait_caught_up(self, since: float, devices: Optional[set[str]] = None) -> None:
        """Every device (ID) has delivered a reading produced after `since`."""
        wanted = devices or set(self.ids.values())
        assert wait_until(lambda: self.watch.caught_up(wanted, since), CATCH_UP_TIMEOUT, POLL), (
            f"readings produced after the fault never arrived from {sorted(wanted)}"
        )


# mosquitto's connection log lines, as journald stores them with -o short-unix:
# "1764245000.123456 host mosquitto[12]: 1764245000: New client connected from 10.0.0.3:4711
#  as 0a:ed:9e:00:00:01 (p5, c0, k15, u'edge-faults-pi-0001')."
# "1764245001.123456 host mosquitto[12]: 1764245001: Client 0a:ed:9e:00:00:01 disconnected."
_CONNECTED = re.compile(r"^(\d+\.\d+) .*New client connected from \S+ as (\S+) \(.*u'([^']+)'\)")
_DISCONNECTED = re.compile(r"^(\d+\.\d+) .*: Client (\S+) (?:disconnected|closed its connection)")
_STARTED = re.compile(r"^(\d+\.\d+) .*mosquitto version \S+ running")


@dataclass
class BrokerLog:
    starts: list[float]  # times mosquitto started
    connects: dict[str, list[float]]  # MQTT user -> times it connected
    disconnects: dict[str, list[float]]  # MQTT user -> times its connection ended

    def downtime(self, user: str) -> float:
        """Seconds between the user's first disconnect and the connect after it."""
        gone = self.disconnects[user][0]
        return min(t for t in self.connects[user] if t >= gone) - gone


def broker_log(container: str, since: float) -> BrokerLog:
    """Mosquitto's starts and client connections since `since`, from the broker's journal."""
    out = docker(
        "exec", container, "journalctl", "-u", "mosquitto", "-o", "short-unix", "--no-pager",
        "--since", f"@{since:.6f}",
    )  # fmt: skip
    log = BrokerLog([], {}, {})
    lines = out.splitlines()
    # A disconnect line names the client ID only; its user comes from a connect line.
    users = {m[2]: m[3] for m in map(_CONNECTED.match, lines) if m}  # client ID -> user
    for line in lines:
        if match := _CONNECTED.match(line):
            log.connects.setdefault(match[3], []).append(float(match[1]))
        elif (match := _DISCONNECTED.match(line)) and match[2] in users:
            log.disconnects.setdefault(users[match[2]], []).append(float(match[1]))
        elif match := _STARTED.match(line):
            log.starts.append(float(match[1]))
    return log
