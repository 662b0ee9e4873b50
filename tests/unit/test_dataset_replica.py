"""The synthetic replica matches the published figures of the real file."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from edge_dataset import cli
from edge_dataset import published as pub
from edge_dataset import replica as replica_module
from edge_dataset.reader import load
from edge_dataset.replica import generate, marker_path
from edge_dataset.report import differences, figures
from edge_dataset.slicer import sensor_rows


@pytest.fixture(scope="session")
def replica() -> bytes:
    return generate(0)  # the one full generation of the session (seconds on a busy host)


@pytest.fixture(scope="module")
def frame(replica: bytes) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(replica))


def test_format_is_the_published_one(replica: bytes) -> None:
    lines = replica.split(b"\n", 3)
    assert lines[0] + b"\n" == pub.HEADER_LINE
    first = lines[1].split(b",")
    assert len(first) == 9 and all(v.startswith(b'"') and v.endswith(b'"') for v in first)
    assert first[0] == b'"1.5945120943859746E9"'  # Java-style double, as published
    assert first[1] == b'"b8:27:eb:bf:9d:51"'


def test_row_counts_duplicates_and_span_are_exact(frame: pd.DataFrame) -> None:
    assert len(frame) == pub.ROWS
    assert int(frame.duplicated().sum()) == pub.DUPLICATES
    counts = frame["device"].value_counts().to_dict()
    assert counts == {s.mac: s.rows for s in pub.SENSORS}
    assert frame["ts"].is_monotonic_increasing  # interleaved in time order
    span_days = (frame["ts"].max() - frame["ts"].min()) / 86_400
    assert span_days == pytest.approx(8.0, abs=0.01)


def test_validate_says_it_matches_the_published_figures(replica: bytes, tmp_path: Path) -> None:
    path = tmp_path / "replica.csv"
    path.write_bytes(replica)
    ds = load(path)
    fig = figures(ds, sum(len(r) for r in sensor_rows(ds)))
    assert differences(fig) == []
    assert (fig.first, fig.last) == (pub.FIRST_READING, pub.LAST_READING)
    assert not ds.synthetic  # no marker next to it: not claimed either way


@pytest.mark.parametrize("sensor", pub.SENSORS, ids=lambda s: s.mac)
def test_per_device_ranges_means_and_gaps(frame: pd.DataFrame, sensor: pub.Sensor) -> None:
    rows = frame[frame["device"] == sensor.mac]
    for column, (lo, hi, mean) in (("temp", sensor.temp), ("humidity", sensor.humidity)):
        assert rows[column].min() == pytest.approx(lo, abs=0.05)
        assert rows[column].max() == pytest.approx(hi, abs=0.05)
        assert rows[column].mean() == pytest.approx(mean, rel=0.05)
    assert rows["co"].min() == pytest.approx(sensor.co[0], rel=1e-3)
    assert rows["co"].max() == pytest.approx(sensor.co[1], rel=1e-3)
    gap = rows["ts"].diff().mean()
    assert gap == pytest.approx(sensor.mean_gap_s, rel=0.05)


def test_gas_ranges_and_correlation(frame: pd.DataFrame) -> None:
    for column, (lo, hi) in (("lpg", pub.LPG_RANGE), ("smoke", pub.SMOKE_RANGE)):
        assert frame[column].min() == pytest.approx(lo, rel=1e-3)
        assert frame[column].max() == pytest.approx(hi, rel=1e-3)
    corr = frame[["co", "lpg", "smoke"]].corr().to_numpy()
    assert (corr > 0.9).all()


def test_light_motion_and_glitches(frame: pd.DataFrame) -> None:
    assert frame["light"].mean() == pytest.approx(pub.LIGHT_FRACTION, abs=0.05)
    assert frame["motion"].mean() == pytest.approx(pub.MOTION_FRACTION, abs=0.005)
    constant = frame[frame["device"] == "1c:bf:ce:15:ec:4d"]["light"]
    assert constant.nunique() == 1
    # Day/night: the other boards switch light on only in some hours of the day.
    others = frame[frame["device"] != "1c:bf:ce:15:ec:4d"]
    hours = ((others["ts"] % 86_400) // 3600).astype(int)
    assert others.groupby(hours)["light"].mean().min() == 0
    glitches = frame[frame["temp"] == 0.0]
    assert 1 <= len(glitches) <= 20
    assert (glitches["humidity"] < 5).all()


def test_sample_cli_is_deterministic_and_marked(
    replica: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.csv"
    assert cli.main(["sample", "--out", str(out), "--seed", "0"]) == 0
    assert out.read_bytes() == replica  # byte-identical for the same seed
    assert "SYNTHETIC replica written" in capsys.readouterr().out
    assert marker_path(out).exists()
    assert load(out).synthetic is True
    assert cli.main(["validate", str(out)]) == 0
    report = capsys.readouterr().out
    assert "SYNTHETIC replica, not real data" in report
    assert "published figures: match" in report


def test_replica_slices_are_marked_synthetic(
    replica: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The default rule: no --source, no $EDGE_DATASET_SOURCE, no ./data file -> cached replica.
    # generate(0) is the session's bytes (test_sample_cli_is_deterministic_and_marked checks a
    # real second generation is identical); write_replica, the marker and the rule run for real.
    real_generate = replica_module.generate
    monkeypatch.setattr(
        replica_module, "generate", lambda seed=0: replica if seed == 0 else real_generate(seed)
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGE_DATASET_SOURCE", raising=False)
    assert cli.main(["slice", "--devices", "3", "--out", "out"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC replica generated (seed 0)" in out
    assert "3 slices: 3 written, 0 unchanged, 0 removed; manifest written (SYNTHETIC" in out
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["synthetic"] is True
    assert manifest["source"]["unique_rows"] == 405_171
    assert cli.main(["slice", "--devices", "3", "--out", "out", "--check"]) == 0
    out = capsys.readouterr().out
    assert "cached SYNTHETIC replica" in out
    assert "0 would be written, 3 unchanged, 0 would be removed; manifest unchanged" in out
    # A file that no longer matches its marker is not labelled synthetic.
    cached = tmp_path / ".cache/dataset/replica.csv"
    cached.write_bytes(cached.read_bytes().replace(b'"22.', b'"23.', 1))
    assert load(cached).synthetic is False
