"""Agent loop pieces: dry-run payloads, queue overflow, watermark, reproducible zipapp."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from edge_agent.agent import Agent, ReadingQueue
from edge_agent.cli import main
from edge_agent.config import load_config
from edge_agent.dataset import read_slice

ROOT = Path(__file__).resolve().parents[2]
HEADER = '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n'


@pytest.fixture
def slice_csv(tmp_path: Path) -> Path:
    rows = "".join(
        f'"{1.5945120943859746e9 + 4 * i:.16E}","b8:27:eb:bf:9d:51","0.00{i + 1}","5{i}.0",'
        f'"{"true" if i % 2 else "false"}","0.007","false","0.02","22.{i}"\n'
        for i in range(3)
    )
    path = tmp_path / "device-0001.csv"
    path.write_text(HEADER + rows + '"broken"\n')
    return path


def test_dry_run_payloads(slice_csv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--dataset",
        str(slice_csv),
        "--dry-run",
        "--count",
        "5",
        "--rate",
        "1000",
        "--device-id",
        "02:42:AC:11:00:02",
        "--device-name",
        "pi-0001",
    ]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    msgs = [json.loads(line) for line in lines]
    assert [m["seq"] for m in msgs] == [0, 1, 2, 3, 4]
    first = msgs[0]
    assert set(first) == {
        "device_id",
        "device_name",
        "ts",
        "seq",
        "epoch",
        "data",
        "source",
        "stats",
    }
    # One run of seqs, one epoch: an integer that JSON carries exactly everywhere.
    assert isinstance(first["epoch"], int) and 0 <= first["epoch"] < 2**53
    assert {m["epoch"] for m in msgs} == {first["epoch"]}
    assert first["device_id"] == "02:42:ac:11:00:02"
    assert first["device_name"] == "pi-0001"
    assert isinstance(first["ts"], float)
    assert first["data"] == {
        "temp": 22.0,
        "humidity": 50.0,
        "co": 0.001,
        "lpg": 0.007,
        "smoke": 0.02,
        "light": False,
        "motion": False,
    }
    assert first["source"] == {"device": "b8:27:eb:bf:9d:51", "ts": 1.5945120943859746e9}
    assert first["stats"] == {"overflow": 0, "reconnects": 0, "skipped_rows": 1}
    # rows wrap around the 3-row slice
    assert [m["data"]["temp"] for m in msgs] == [22.0, 22.1, 22.2, 22.0, 22.1]
    assert lines[0] == json.dumps(first, separators=(",", ":"))  # compact


def test_reading_queue_drops_oldest() -> None:
    q = ReadingQueue(maxlen=3, rows=2, seq=10, row=1)
    dropped = [q.push(float(t)) for t in range(5)]
    assert dropped == [False, False, False, True, True]
    assert (q.head_seq, q.head_row, len(q)) == (12, 1, 3)
    assert q.pop() == (12, 1, 2.0)
    assert q.pop() == (13, 0, 3.0)


class OfflineSink:
    reconnects = 0

    def can_publish(self) -> bool:
        return False


def test_overflow_counted_and_watermark(slice_csv: Path, tmp_path: Path) -> None:
    cfg = load_config(
        [
            "--dataset",
            str(slice_csv),
            "--state-dir",
            str(tmp_path / "st"),
            "--queue-size",
            "4",
            "--device-id",
            "02:42:ac:11:00:02",
        ],
        {},
    )
    agent = Agent(cfg, read_slice(str(slice_csv)))
    agent.sink = OfflineSink()  # type: ignore[assignment]
    for _ in range(7):
        agent._produce()
    assert agent.overflow == 3
    assert (agent.queue.head_seq, agent.next_seq) == (3, 7)
    wm = agent.watermark()
    assert (wm.seq, wm.cursor, wm.overflow) == (3, 0, 3)  # seq 3 is row 3 % 3
    agent.inflight = {2: 2, 1: 1}
    assert agent.watermark().seq == 1
    payload = json.loads(agent.payload(5, 2, 123.0))
    assert payload["stats"]["overflow"] == 3 and payload["seq"] == 5
    agent.inflight = {}
    agent.save(force=True)
    restarted = Agent(cfg, read_slice(str(slice_csv)))
    assert (restarted.next_seq, restarted.next_row, restarted.overflow) == (3, 0, 3)
    agent.readings.close()
    restarted.readings.close()


def test_pyz_is_reproducible_and_runs(tmp_path: Path) -> None:
    digests = []
    for name in ("a.pyz", "b.pyz"):
        out = tmp_path / name
        subprocess.run(
            [sys.executable, str(ROOT / "agent" / "build_pyz.py"), "--out", str(out)],
            check=True,
            capture_output=True,
        )
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    pyz = tmp_path / "a.pyz"
    assert pyz.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert pyz.stat().st_mode & 0o777 == 0o755
    result = subprocess.run([sys.executable, str(pyz), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--replay-speed" in result.stdout
