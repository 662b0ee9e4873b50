"""edge-telemetry export: the dataset's own CSV format, replayable by the fleet's readers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest
from edge_agent import protocol
from edge_agent.dataset import Reading, parse_row, read_slice
from edge_consumer.store import TelemetryRow, open_store, telemetry_row
from edge_consumer.store.cli import main, parse_time
from edge_consumer.store.export import java_double
from edge_consumer.validation import Telemetry, Validator
from edge_dataset import reader
from edge_dataset.published import HEADER_LINE

# Lines of the replica, exactly as `edge-dataset sample` writes them: float32-widened values,
# a temp 0.0 / humidity 1.1 glitch, light and motion on.
LINES = [
    '"1.5945120943859746E9","b8:27:eb:bf:9d:51","0.004994965283100503","48.6","false","0.007692717148996403","false","0.020532462378631888","22.0"',
    '"1.5945120947959747E9","00:0f:00:70:91:0a","0.0038694560297722847","77.5999984741211","false","0.006395085613307043","false","0.016855589992242064","19.100000381469727"',
    '"1.5945120955159748E9","1c:bf:ce:15:ec:4d","0.0040351326733979774","62.099998474121094","true","0.0065920637915875225","false","0.017410697952865074","24.299999237060547"',
    '"1.594516586190067E9","b8:27:eb:bf:9d:51","0.00539353340687624","54.0","false","0.00813214048650751","true","0.021787580170837734","21.8"',
    '"1.5945133051781597E9","1c:bf:ce:15:ec:4d","0.004317964579794387","60.0","true","0.006923254549009292","true","0.018346566335478747","25.5"',
    '"1.5945334957398596E9","00:0f:00:70:91:0a","0.004133683846817647","1.100000023841858","false","0.006708172291453142","false","0.017738437282216142","0.0"',
]  # fmt: skip
DEVICE = "0a:ed:9e:00:00:01"
T0 = 1_795_910_400.0  # 2026-11-29T00:00:00Z
_data = attrgetter(*protocol.DATA_FIELDS)


def published(seq: int, reading: Reading) -> Telemetry:
    """What the agent publishes for this reading, as the consumer validates it."""
    payload = protocol.telemetry(
        DEVICE,
        "pi-0001",
        T0 + seq,
        seq,
        dict(zip(protocol.DATA_FIELDS, _data(reading))),
        source={"device": reading.device, "ts": reading.ts},
        epoch=61008130096940,
    )
    message = Validator().validate(protocol.telemetry_topic(DEVICE), payload)
    assert isinstance(message, Telemetry), message
    return message


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path}/telemetry.db"
    readings = [parse_row(line.replace('"', "").split(",")) for line in LINES]
    with open_store(url) as store:
        store.write_batch([telemetry_row(published(i, r)) for i, r in enumerate(readings)])
    return url


def test_export_is_byte_identical_to_the_dataset_lines(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    assert main(["export", "--store", store_url, "--device", DEVICE, "--out", str(out)]) == 0
    assert out.read_bytes() == HEADER_LINE + "".join(f"{line}\n" for line in LINES).encode()


def test_export_reads_back_with_the_fleets_own_readers(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    assert main(["export", "--store", store_url, "--device", DEVICE, "--out", str(out)]) == 0
    expected = [parse_row(line.replace('"', "").split(",")) for line in LINES]

    # The agent's reader (what a device replays) ...
    sliced = read_slice(str(out))
    try:
        assert sliced.skipped == 0
        assert [sliced[i] for i in range(len(sliced))] == expected
    finally:
        sliced.close()
    # ... and the controller's validator and slicer input.
    dataset = reader.load(out)
    assert dataset.rows == len(LINES) and dataset.quoted
    assert list(dataset.ts) == [r.ts for r in expected]
    assert set(dataset.devices) == {r.device for r in expected}


def test_since_until_select_a_half_open_range(store_url: str, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    args = ["export", "--store", store_url, "--device", DEVICE.upper(), "--out", str(out)]
    assert main([*args, "--since", "2026-11-29T00:00:01Z", "--until", str(T0 + 3)]) == 0
    assert out.read_text().splitlines()[1:] == LINES[1:3]
    assert main([*args, "--since", "2026-11-29T00:00:04", "--until", "2026-11-29T02:00+01:00"]) == 0
    assert out.read_text().splitlines()[1:] == LINES[4:]


def test_a_reading_without_source_exports_its_own_device_and_ts(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/t.db"
    with open_store(url) as store:
        bare = TelemetryRow(
            DEVICE, 0, None, T0, None, "pi", None, 1.5, 2.0, 3e-5, 4.0, 5.0, True, False
        )
        store.write_batch([bare])
    out = tmp_path / "out.csv"
    assert main(["export", "--store", url, "--device", DEVICE, "--out", str(out)]) == 0
    assert out.read_text().splitlines()[1] == (
        f'"1.7959104E9","{DEVICE}","3.0E-5","2.0","true","4.0","false","5.0","1.5"'
    )
    assert len(read_slice(str(out))) == 1


def test_export_to_stdout(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--store", store_url, "--device", DEVICE, "--out", "-"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[1:] == LINES
    assert "6 readings of" in captured.err


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1594512094.3859746, "1.5945120943859746E9"),
        (1594512095.0, "1.594512095E9"),
        (1594512094.5, "1.5945120945E9"),
        (1e7, "1.0E7"),
        (9999999.5, "9999999.5"),
        (22.7, "22.7"),
        (0.001, "0.001"),
        (0.0009, "9.0E-4"),
        (3e-05, "3.0E-5"),
        (0.0, "0.0"),
        (-1594512094.25, "-1.59451209425E9"),
        (1.2345e20, "1.2345E20"),
    ],
)
def test_java_double(value: float, text: str) -> None:
    assert java_double(value) == text
    assert float(text) == value


def test_parse_time() -> None:
    assert parse_time("1795910400", "--since") == T0
    assert parse_time("1.7959104E9", "--since") == T0
    assert parse_time("2026-11-29T00:00:00Z", "--since") == T0
    assert parse_time("2026-11-29", "--since") == T0  # naive: UTC
    assert parse_time("2026-11-29T01:00:00+01:00", "--since") == T0
    assert parse_time(" 2026-11-29T00:00:00.5z ", "--since") == T0 + 0.5
    for bad in ("yesterday", "", "nan", "inf", "2026-13-01", "1e999"):
        with pytest.raises(ValueError, match="--since"):
            parse_time(bad, "--since")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--since", "tuesday"], "--since 'tuesday' is neither ISO 8601"),
        (["--until", "nan"], "--until 'nan' is not a finite time"),
        (["--since", "2026-11-30", "--until", "2026-11-29"], "must be before --until"),
        (["--format", "xlsx"], "unknown format 'xlsx'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    store_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "out.csv"
    args = ["export", "--store", store_url, "--device", DEVICE, "--out", str(out), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("edge-telemetry: error:")
    assert not out.exists()


def test_missing_arguments_exit_2(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    monkeypatch.delenv("EDGE_TELEMETRY_STORE", raising=False)
    assert main(["export", "--device", DEVICE, "--out", "x.csv"]) == 2
    assert "--store is required" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["export", "--store", "sqlite:///x.db"]) == 2


def test_store_from_the_environment(store_url: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("EDGE_TELEMETRY_STORE", store_url)
    out = tmp_path / "out.csv"
    assert main(["export", "--device", DEVICE, "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == len(LINES) + 1


def test_a_missing_store_is_exit_1_and_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite://{tmp_path}/nope.db"
    assert main(["export", "--store", url, "--device", DEVICE, "--out", str(tmp_path / "o")]) == 1
    assert "cannot open SQLite store" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is not None, reason="pyarrow installed")
def test_parquet_without_pyarrow_names_it(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.parquet"
    args = ["export", "--store", store_url, "--device", DEVICE, "--format", "parquet"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        "edge-telemetry: error: --format parquet needs the pyarrow package, which is not "
        "installed\n"
    )
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow not installed")
def test_parquet(store_url: str, tmp_path: Path) -> None:
    import pandas as pd

    out = tmp_path / "out.parquet"
    args = ["export", "--store", store_url, "--device", DEVICE, "--format", "parquet"]
    assert main([*args, "--out", str(out)]) == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns) == list(protocol.COLUMNS) and len(frame) == len(LINES)


def test_the_console_script_is_wired() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_consumer.store.cli", "export", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "--since" in result.stdout
