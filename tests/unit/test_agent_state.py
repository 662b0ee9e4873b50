"""State file: atomic round trip, fresh start, corrupt files are configuration errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from edge_agent.cli import main
from edge_agent.config import ConfigError
from edge_agent.protocol import EPOCH_BITS
from edge_agent.state import State, load_state, new_epoch, save_state, state_path


def test_fresh_when_missing(tmp_path: Path) -> None:
    assert load_state(str(tmp_path / "new")) == State()


def test_round_trip_creates_dir_and_leaves_no_tmp(tmp_path: Path) -> None:
    d = tmp_path / "state"
    st = State(seq=41, cursor=7, overflow=3, device_id="02:42:ac:11:00:02", epoch=2**47 + 5)
    save_state(str(d), st)
    assert load_state(str(d)) == st
    assert sorted(p.name for p in d.iterdir()) == ["state.json"]
    assert json.loads((d / "state.json").read_text()) == {
        "seq": 41,
        "cursor": 7,
        "overflow": 3,
        "device_id": "02:42:ac:11:00:02",
        "epoch": 2**47 + 5,
    }


def test_state_from_before_epochs_loads_without_one(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"seq": 5, "cursor": 2, "overflow": 0}')
    assert load_state(str(tmp_path)) == State(seq=5, cursor=2)


def test_new_epochs_are_random_and_json_exact() -> None:
    epochs = {new_epoch() for _ in range(100)}
    assert len(epochs) == 100
    assert all(0 <= e < 2**EPOCH_BITS <= 2**53 for e in epochs)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        '{"seq": -1}',
        '{"seq": "5"}',
        '{"cursor": true}',
        '{"device_id": 5}',
        '{"epoch": "1"}',
        '{"epoch": -1}',
        '{"epoch": true}',
    ],
)
def test_corrupt_is_config_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_state(str(tmp_path))
    assert exc.value.setting == "STATE_DIR"
    assert "corrupt" in str(exc.value)


def test_main_exits_2_on_corrupt_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # keep the placeholders for ssl/hashlib out of the test process
    monkeypatch.setattr("edge_agent.lean.defer_unused_imports", lambda tls: None)
    csv = tmp_path / "s.csv"
    csv.write_text(
        '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n'
        '"1.6E9","b8:27:eb:bf:9d:51","0.1","51","false","0.2","false","0.3","22"\n'
    )
    (tmp_path / "st").mkdir()
    Path(state_path(str(tmp_path / "st"))).write_text("garbage")
    argv = [
        "--dataset",
        str(csv),
        "--state-dir",
        str(tmp_path / "st"),
        "--device-id",
        "02:42:ac:11:00:02",
        "--port",
        "1",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("edge-agent: error: STATE_DIR: ")
