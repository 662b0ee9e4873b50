"""edge_agent.protocol is the one home of the wire format: everyone else uses it, and agrees."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from edge_agent import protocol
from edge_agent.agent import Agent
from edge_agent.config import load_config
from edge_agent.dataset import Reading, read_slice
from edge_agent.state import State, load_state, save_state
from edge_consumer.validation import Telemetry, Validator

ROOT = Path(__file__).resolve().parents[2]
DEV = "02:42:ac:11:00:02"
HEADER = ",".join(f'"{c}"' for c in protocol.COLUMNS) + "\n"
ROW = '"1.6E9","b8:27:eb:bf:9d:51","0.005","51.0","false","0.0076","false","0.0204","22.7"\n'


@pytest.fixture
def slice_csv(tmp_path: Path) -> Path:
    path = tmp_path / "s.csv"
    path.write_text(HEADER + ROW * 3)
    return path


def make_agent(slice_csv: Path, state_dir: Path) -> Agent:
    argv = ["--dataset", str(slice_csv), "--state-dir", str(state_dir), "--device-id", DEV]
    return Agent(load_config(argv, {}), read_slice(str(slice_csv)))


# --- the facts, and the modules that must agree on them ------------------------------------


def test_topics_round_trip() -> None:
    topic = protocol.telemetry_topic(DEV)
    assert topic == f"iot/telemetry/{DEV}"
    assert protocol.status_topic(DEV) == f"iot/status/{DEV}"
    assert protocol.device_from_topic(topic, protocol.TELEMETRY_PREFIX) == DEV
    for bad in ("iot/telemetry", "iot/telemetry/", "iot/telemetryX/a", "iot/telemetry/a/b"):
        assert protocol.device_from_topic(bad, protocol.TELEMETRY_PREFIX) is None


def test_reading_fields_are_the_csv_columns() -> None:
    assert Reading._fields == protocol.COLUMNS
    assert set(protocol.FLOAT_COLUMNS) | set(protocol.BOOL_COLUMNS) | {"device"} == set(
        protocol.COLUMNS
    )
    assert set(protocol.DATA_FIELDS) <= set(protocol.COLUMNS)


def test_agent_payload_is_what_the_consumer_accepts(slice_csv: Path, tmp_path: Path) -> None:
    agent = make_agent(slice_csv, tmp_path / "st")
    payload = agent.payload(7, 1, 1.7e9)
    message = json.loads(payload)
    assert list(message) == [*protocol.FIELDS, *protocol.OPTIONAL_FIELDS]
    assert list(message["data"]) == list(protocol.DATA_FIELDS)
    assert list(message["source"]) == list(protocol.SOURCE_FIELDS)
    assert list(message["stats"]) == list(protocol.STATS_FIELDS)
    result = Validator().validate(protocol.telemetry_topic(DEV), payload)
    assert isinstance(result, Telemetry)
    assert (result.seq, result.epoch) == (7, agent.epoch)
    agent.readings.close()


def test_source_macs_are_the_published_sensors_sorted() -> None:
    from edge_dataset import published

    assert tuple(sorted(s.mac for s in published.SENSORS)) == protocol.SOURCE_MACS
    assert all(protocol.MAC_RE.match(mac) for mac in protocol.SOURCE_MACS)
    assert [protocol.source_mac(n) for n in range(1, 8)] == [
        protocol.SOURCE_MACS[(n - 1) % 3] for n in range(1, 8)
    ]


def test_slicer_follows_the_assignment_rule() -> None:
    from edge_dataset.slicer import windows

    sensors = [sensor for sensor, _, _ in windows([100, 100, 100], 10)]
    assert sensors == [protocol.source_index(n) for n in range(1, 11)]


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("aa:bb:cc:dd:ee:ff", True),
        ("00:0f:00:70:91:0a", True),
        ("AA:BB:CC:DD:EE:FF", False),  # devices report lower case
        ("aa:bb:cc:dd:ee", False),
        ("aa-bb-cc-dd-ee-ff", False),
        ("aa:bb:cc:dd:ee:ff:00", False),
    ],
)
def test_mac_pattern(text: str, ok: bool) -> None:
    assert bool(protocol.MAC_RE.match(text)) is ok
    assert bool(re.fullmatch(protocol.MAC_PATTERN, text)) is ok


def test_no_other_copies_of_the_mac_pattern_in_python_code() -> None:
    octet = "[0-9a-f]{2}"
    allowed = {ROOT / "agent" / "edge_agent" / "protocol.py"}
    copies = [
        path.relative_to(ROOT)
        for top in ("agent", "consumer", "dataset", "plugins/inventory")
        for path in (ROOT / top).rglob("*.py")
        if path not in allowed and octet in path.read_text(encoding="utf-8").lower()
    ]
    assert copies == []


def test_protocol_is_cheap_to_import() -> None:
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import edge_agent.protocol\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    path = [str(ROOT / "agent")]
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path[:0] = {path!r}\n{code}"],
        capture_output=True,
        text=True,
        check=True,
    )
    new = set(json.loads(result.stdout))
    assert new >= {"edge_agent", "edge_agent.protocol"}
    assert not {"argparse", "dataclasses", "inspect", "paho", "socket", "logging"} & new


# --- epochs: a device that lost its state starts a new run of seqs ---------------------------


def test_agent_picks_an_epoch_on_first_start_and_keeps_it(slice_csv: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "st"
    first = make_agent(slice_csv, state_dir)
    assert isinstance(first.epoch, int)
    assert load_state(str(state_dir)).epoch == first.epoch  # saved at startup
    first.next_seq = 5  # as if five readings were acked
    first.save(force=True)
    first.readings.close()

    restarted = make_agent(slice_csv, state_dir)
    assert (restarted.epoch, restarted.next_seq) == (first.epoch, 5)
    assert json.loads(restarted.payload(5, 0, 1.0))["epoch"] == first.epoch
    restarted.readings.close()

    (state_dir / "state.json").unlink()  # the device is wiped
    wiped = make_agent(slice_csv, state_dir)
    assert wiped.next_seq == 0 and wiped.epoch != first.epoch
    wiped.readings.close()


def test_agent_upgraded_from_before_epochs_keeps_its_seqs(slice_csv: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "st"
    state_dir.mkdir()
    (state_dir / "state.json").write_text(f'{{"seq": 9, "cursor": 0, "device_id": "{DEV}"}}')
    agent = make_agent(slice_csv, state_dir)
    assert agent.next_seq == 9 and isinstance(agent.epoch, int)
    assert load_state(str(state_dir)).epoch == agent.epoch
    agent.readings.close()


def test_state_of_another_device_means_a_new_epoch(slice_csv: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "st"
    save_state(str(state_dir), State(seq=9, device_id="02:42:ac:11:00:99", epoch=1))
    agent = make_agent(slice_csv, state_dir)
    assert agent.next_seq == 0 and agent.epoch not in (None, 1)
    agent.readings.close()
