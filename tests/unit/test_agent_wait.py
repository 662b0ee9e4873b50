"""The agent sleeps until its next due event, and a stop request (SIGTERM) ends any wait."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import pytest
from edge_agent.agent import SAVE_EVERY_SECONDS, Agent
from edge_agent.cli import main
from edge_agent.config import _parse_simple, build_parser, load_config
from edge_agent.dataset import read_slice
from edge_agent.publisher import KEEPALIVE, KEEPALIVE_POLL, Publisher
from edge_agent.wake import Waker

ROOT = Path(__file__).resolve().parents[2]
HEADER = '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n'
ROW = '"1.6E9","b8:27:eb:bf:9d:51","0.005","51.0","false","0.0076","false","0.0204","22.7"\n'


@pytest.fixture
def slice_csv(tmp_path: Path) -> Path:
    path = tmp_path / "s.csv"
    path.write_text(HEADER + ROW * 3)
    return path


def make_agent(slice_csv: Path, tmp_path: Path, *extra: str) -> Agent:
    argv = ["--dataset", str(slice_csv), "--state-dir", str(tmp_path / "st")]
    cfg = load_config([*argv, "--device-id", "02:42:ac:11:00:02", *extra], {})
    return Agent(cfg, read_slice(str(slice_csv)))


class FakeSink:
    """Connected, publishes nothing by itself; next_event() is whatever the test sets."""

    reconnects = 0

    def __init__(self, event: float, window: bool = True) -> None:
        self.event = event
        self.window = window

    def can_publish(self) -> bool:
        return self.window

    def next_event(self) -> float:
        return self.event


def test_wake_at_is_the_earliest_due_event(slice_csv: Path, tmp_path: Path) -> None:
    agent = make_agent(slice_csv, tmp_path)
    now = time.monotonic()
    agent.sink = FakeSink(event=now + 12.0)  # e.g. paho's next keepalive check
    assert agent.save_due() is None  # nothing changed since the state file was written
    assert agent.wake_at(now + 5.0) == now + 5.0  # next reading first
    assert agent.wake_at(now + 20.0) == now + 12.0  # keepalive first
    assert agent.wake_at(None) == now + 12.0  # --count done: no more readings
    # A backlog the window can take is handed over without sleeping; a full window waits.
    agent._produce()
    assert agent.wake_at(now + 5.0) == 0.0
    agent.sink = FakeSink(event=now + 12.0, window=False)
    assert agent.wake_at(now + 5.0) == now + 5.0
    agent.readings.close()


def test_state_save_is_a_due_event(slice_csv: Path, tmp_path: Path) -> None:
    agent = make_agent(slice_csv, tmp_path)
    agent.sink = FakeSink(event=float("inf"))
    now = time.monotonic()
    # An ack moved the watermark just after a save: the save is due a second after that one.
    agent.next_seq += 1
    agent._last_save = now
    assert agent.save_due() == now + SAVE_EVERY_SECONDS
    assert agent.wake_at(now + 5.0) == now + SAVE_EVERY_SECONDS
    agent.save()  # not yet: at most one write per SAVE_EVERY_SECONDS
    assert agent.save_due() == now + SAVE_EVERY_SECONDS
    agent._last_save = now - SAVE_EVERY_SECONDS
    agent.save()
    assert agent.save_due() is None
    assert agent.wake_at(now + 5.0) == now + 5.0
    agent.readings.close()


def test_idle_agent_sleeps_a_whole_interval(
    slice_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = make_agent(slice_csv, tmp_path, "--dry-run", "--interval", "5")
    waits: list[float] = []

    def loop(timeout: float) -> None:
        waits.append(timeout)
        if len(waits) == 3:
            agent.request_stop()

    monkeypatch.setattr(agent.sink, "loop", loop)
    monkeypatch.setattr(agent.sink, "out", io.StringIO())
    agent.run()
    assert len(waits) == 3
    assert all(4.9 < w <= 5.0 for w in waits), waits  # not 0.1 s slices
    agent.readings.close()


def test_sigterm_ends_a_long_wait_promptly(
    slice_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Python resumes an interrupted select() for the rest of its timeout; the waker must end
    # it. The signal arrives from another thread while main() sleeps out a 60 s interval.
    argv = ["--dataset", str(slice_csv), "--dry-run", "--interval", "60", "--device-id"]
    sent = []

    def ours(signum: int, frame: Any) -> None:  # a SIGTERM before main()'s handler
        pass

    def kill_when_waiting() -> None:
        deadline = time.monotonic() + 10
        while signal.getsignal(signal.SIGTERM) is ours and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # well into the first wait
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, ours)
    killer = threading.Thread(target=kill_when_waiting)
    try:
        killer.start()
        assert main([*argv, "02:42:ac:11:00:02"]) == 0
        stopped = time.monotonic()
        killer.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert stopped - sent[0] < 1.0
    assert len(capsys.readouterr().out.splitlines()) == 1  # the first reading, then the stop


def test_waker_wakes_once() -> None:
    waker = Waker()
    assert waker.wait(0.0) == ([], [])
    waker.wake()
    waker.wake()
    started = time.monotonic()
    assert waker.wait(10.0) == ([], [])
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    waker.wait(0.2)  # both wake-ups were consumed: this one sleeps again
    assert time.monotonic() - started >= 0.15
    waker.close()
    waker.wake()  # after close: ignored


class FakeClient:
    """The public external-loop API of paho's Client, over one end of a socket pair."""

    def __init__(self, sock: Optional[socket.socket]) -> None:
        self.sock = sock
        self.calls: list[str] = []

    def socket(self) -> Optional[socket.socket]:
        return self.sock

    def want_write(self) -> bool:
        return False

    def loop_read(self) -> None:
        assert self.sock is not None
        self.sock.recv(100)
        self.calls.append("read")

    def loop_write(self) -> None:
        self.calls.append("write")

    def loop_misc(self) -> None:
        self.calls.append("misc")


def make_publisher(tmp_path: Path, client: Any) -> Publisher:
    cfg = load_config(["--dataset", "x", "--device-id", "02:42:ac:11:00:02"], {})
    pub = Publisher(cfg, lambda seq: None, Waker())
    pub.client = client
    return pub


def test_publisher_loop_returns_on_packet_or_wake(tmp_path: Path) -> None:
    ours, broker = socket.socketpair()
    client = FakeClient(ours)
    pub = make_publisher(tmp_path, client)
    broker.send(b"\x40\x02\x00\x01")  # a PUBACK
    started = time.monotonic()
    pub.loop(10.0)
    assert client.calls == ["read", "misc"]
    pub.waker.wake()
    pub.loop(10.0)
    assert client.calls == ["read", "misc", "misc"]
    assert time.monotonic() - started < 1.0
    client.sock = None  # disconnected: only the waker and the timeout end the wait
    pub.waker.wake()
    pub.loop(10.0)
    assert time.monotonic() - started < 1.0
    assert pub.next_event() == pub._next_attempt  # the backoff expiry
    ours.close()
    broker.close()


def test_keepalive_due_follows_paho(tmp_path: Path) -> None:
    pub = make_publisher(tmp_path, None)
    now = time.monotonic()
    c = SimpleNamespace(socket=lambda: object(), _last_msg_out=now - 3.0, _ping_t=0.0)
    c._last_bytes_received = now - 1.0  # paho 2.2
    pub.client = c
    assert pub.next_event() == now - 3.0 + KEEPALIVE
    c._ping_t = now - 4.0  # unanswered ping: paho gives up a keepalive after it
    assert pub.next_event() == now - 4.0 + KEEPALIVE
    del c._last_bytes_received
    c._last_msg_in, c._ping_t = now - 5.0, 0  # paho 2.0 and 2.1; paho resets _ping_t to int 0
    assert pub.next_event() == now - 5.0 + KEEPALIVE
    # loop_misc() already ran past that time without a ping: do not spin, poll instead.
    pub._misc_at = now - 5.0 + KEEPALIVE + 0.1
    assert now + KEEPALIVE_POLL <= pub.next_event() <= time.monotonic() + KEEPALIVE_POLL
    pub._misc_at = 0.0
    del c._last_msg_in  # a paho without these names: poll often enough for the keepalive
    assert now + KEEPALIVE_POLL <= pub.next_event() <= time.monotonic() + KEEPALIVE_POLL
    assert KEEPALIVE + KEEPALIVE_POLL < 1.5 * KEEPALIVE  # the broker's limit


def test_real_paho_keepalive_attributes_exist(tmp_path: Path) -> None:
    cfg = load_config(["--dataset", "x", "--device-id", "02:42:ac:11:00:02"], {})
    pub = Publisher(cfg, lambda seq: None, Waker())
    pub.client.socket = lambda: object()  # type: ignore[method-assign]
    due = pub.next_event()
    # paho set its times when the client was made: due a keepalive later, not a poll later.
    assert abs(due - (time.monotonic() + KEEPALIVE)) < 1.0


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--rate", "2"],
        ["--replay-speed=60", "--dry-run"],
        ["--dataset", "d.csv", "--device-name", "", "--count", "5", "--config", "c.json"],
        ["--broker=-odd-but-explicit", "--log-level", "debug"],
        ["--dry-run", "--dry-run"],
    ],
)
def test_simple_command_lines_parse_as_argparse_does(argv: list[str]) -> None:
    assert _parse_simple(argv) == vars(build_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--rat", "2"],  # argparse accepts abbreviations
        ["--rate", "-1"],  # argparse takes a negative number as the value
        ["--rate", "1", "--rate", "2"],
        ["--rate", "1", "--replay-speed", "2"],
        ["--rate"],
        ["positional"],
        ["--dry-run=yes"],
        ["--", "--rate", "1"],
    ],
)
def test_anything_else_is_left_to_argparse(argv: list[str]) -> None:
    assert _parse_simple(argv) is None


def test_unit_command_line_imports_no_heavy_modules(slice_csv: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from edge_agent.config import load_config\n"
        "from edge_agent.lean import defer_unused_imports\n"
        "load_config(['--rate', '2'], {'DATASET_PATH': 'x', 'DEVICE_ID': '02:42:ac:11:00:02'})\n"
        "defer_unused_imports(tls=True)\n"
        "import logging, edge_agent.agent\n"
        "heavy = {'argparse', 'dataclasses', 'inspect', 'traceback', 'ipaddress', 'email'}\n"
        "real = {n for n, m in list(sys.modules.items()) if 'placeholder' not in str(m.__doc__)}\n"
        "print(sorted(heavy & real))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path[:0] = {_paths()!r}\n{code}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stderr


def _paths() -> list[str]:
    import paho

    return [str(ROOT / "agent"), str(Path(next(iter(paho.__path__))).parent)]
