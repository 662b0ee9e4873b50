"""edge-dataset slice: assignment, equal contiguous windows, determinism, minimal rewrites."""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from edge_dataset import cli
from edge_dataset.published import HEADER_LINE
from edge_dataset.reader import DatasetError, load
from edge_dataset.slicer import sensor_rows, windows, write_slices

MACS = ("b8:27:eb:bf:9d:51", "00:0f:00:70:91:0a", "1c:bf:ce:15:ec:4d")
SIZES = {MACS[0]: 50, MACS[1]: 31, MACS[2]: 29}


def make_source(tmp_path: Path, seed: int = 1) -> Path:
    """Interleaved readings, a few out of time order, plus two exact duplicate lines."""
    rng = random.Random(seed)
    lines = []
    for mac, n in SIZES.items():
        for i in range(n):
            ts = 1594512094.0 + i * 3.5 + rng.random()
            temp = f"{20 + rng.random():.1f}"
            values = [f"{ts!r}", mac, "0.0049", "51.0", "false", "0.0076", "false", "0.02", temp]
            lines.append(",".join(f'"{v}"' for v in values))
    rng.shuffle(lines)
    lines += [lines[3], lines[10]]
    path = tmp_path / "source.csv"
    path.write_bytes(HEADER_LINE + "".join(f"{line}\n" for line in lines).encode())
    return path


def slice_rows(path: Path) -> list[tuple[float, bytes]]:
    lines = path.read_bytes().splitlines()
    assert lines[0] + b"\n" == HEADER_LINE
    return [(float(line.split(b",")[0].strip(b'"')), line) for line in lines[1:]]


@pytest.mark.parametrize("n_devices", [1, 2, 3, 4, 7, 10, 29, 30])
def test_windows_equal_contiguous_and_assigned_round_robin(n_devices: int) -> None:
    sizes = [50, 31, 29]
    plan = windows(sizes, n_devices)
    for i, (sensor, _, _) in enumerate(plan):
        assert sensor == i % 3
    for sensor, size in enumerate(sizes):
        mine = [(start, end) for s, start, end in plan if s == sensor]
        if not mine:
            continue
        assert mine[0][0] == 0 and mine[-1][1] == size  # covers every reading
        assert all(a[1] == b[0] for a, b in zip(mine, mine[1:]))  # contiguous, no overlap
        lengths = [end - start for start, end in mine]
        assert max(lengths) - min(lengths) <= 1
        assert lengths == [len(part) for part in np.array_split(np.arange(size), len(mine))]


def test_more_devices_than_readings_is_an_error(tmp_path: Path) -> None:
    ds = load(make_source(tmp_path))
    with pytest.raises(
        DatasetError, match=r"91 devices need 30 readings from 1c:bf:ce:15:ec:4d, it has 29"
    ):
        write_slices(ds, 91, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


def test_slices_sorted_deduplicated_and_match_manifest(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    out = tmp_path / "out"
    assert cli.main(["slice", "--devices", "7", "--out", str(out), "--source", str(source)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["synthetic"] is False
    assert manifest["source"] == {"path": str(source), "rows": 112, "unique_rows": 110}
    sorted_macs = sorted(MACS)
    by_sensor: dict[str, list[bytes]] = {}
    for i, entry in enumerate(manifest["devices"], start=1):
        assert entry["device_number"] == i
        assert entry["file"] == f"device-{i:04d}.csv"
        assert entry["source_device"] == sorted_macs[(i - 1) % 3]
        rows = slice_rows(out / entry["file"])
        assert len(rows) == entry["rows"] == entry["row_end"] - entry["row_start"]
        assert rows[0][0] == entry["ts_first"] and rows[-1][0] == entry["ts_last"]
        by_sensor.setdefault(entry["source_device"], []).extend(line for _, line in rows)
    source_lines = source.read_bytes().splitlines()[1:]
    for mac, lines in by_sensor.items():
        expected = sorted(
            {line for line in source_lines if mac.encode() in line},
            key=lambda line: float(line.split(b",")[0].strip(b'"')),
        )
        assert lines == expected  # all readings once, time ordered, original text
    assert (out / "manifest.json").read_text().endswith("}\n")


def test_byte_identical_across_runs(tmp_path: Path) -> None:
    source = make_source(tmp_path)
    for name in ("a", "b"):
        write_slices(load(source), 5, tmp_path / name)
    a = {p.name: p.read_bytes() for p in (tmp_path / "a").iterdir()}
    b = {p.name: p.read_bytes() for p in (tmp_path / "b").iterdir()}
    assert a == b and len(a) == 6


def test_rewrites_only_changed_files_and_removes_stale(tmp_path: Path) -> None:
    source, out = make_source(tmp_path), tmp_path / "out"
    result, _ = write_slices(load(source), 6, out)
    assert (result.written, result.unchanged, result.removed) == (6, 0, 0)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()}

    result, _ = write_slices(load(source), 6, out)
    assert (result.written, result.unchanged, result.removed) == (0, 6, 0)
    assert not result.manifest_written
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.iterdir()} == before

    # 4 devices: sensor 0 keeps its two windows (devices 1 and 4 unchanged), devices 2 and 3
    # now hold all of their sensor, and 5-6 go away.
    result, _ = write_slices(load(source), 4, out)
    assert (result.written, result.unchanged, result.removed) == (2, 2, 2)
    assert (out / "device-0001.csv").stat().st_ino == before["device-0001.csv"][0]
    assert sorted(p.name for p in out.glob("device-*.csv")) == [
        f"device-{i:04d}.csv" for i in range(1, 5)
    ]


def test_one_source_device_needs_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "one.csv"
    line = '"1.5945120943859746E9","b8:27:eb:bf:9d:51","1","2","true","3","false","4","5"\n'
    source.write_bytes(HEADER_LINE + line.encode())
    args = ["slice", "--devices", "2", "--out", str(tmp_path / "o"), "--source", str(source)]
    assert cli.main(args) == 2
    assert "expected 3 source devices, found 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert cli.main([*args, "--allow-sources-mismatch"]) == 2  # 2 devices, 1 reading
    assert cli.main(["slice", "--devices", "1", *args[3:], "--allow-sources-mismatch"]) == 0


def test_sensor_rows_drop_duplicates_only_when_identical(tmp_path: Path) -> None:
    ds = load(make_source(tmp_path))
    assert sum(len(r) for r in sensor_rows(ds)) == ds.rows - 2


def test_manifest_is_plain_sorted_indented_json(tmp_path: Path) -> None:
    _, result_windows = write_slices(load(make_source(tmp_path)), 5, tmp_path / "out")
    text = (tmp_path / "out" / "manifest.json").read_text()
    expected = json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert text == expected
    assert json.loads(text)["devices"] == [asdict(w) for w in result_windows]


def snapshot(out: Path) -> dict[str, tuple[int, int, bytes]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}


def test_check_on_up_to_date_dir_reports_nothing_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = make_source(tmp_path), tmp_path / "out"
    args = ["slice", "--devices", "6", "--out", str(out), "--source", str(source)]
    assert cli.main(args) == 0
    assert (
        "6 slices: 6 written, 0 unchanged, 0 removed; manifest written" in capsys.readouterr().out
    )
    before = snapshot(out)
    assert cli.main([*args, "--check"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert (
        line == "6 slices: 0 would be written, 6 unchanged, 0 would be removed; manifest unchanged"
    )
    assert not re.search(r"[1-9][0-9]* would be (written|removed)|manifest would be written", line)
    assert snapshot(out) == before
    assert cli.main(args) == 0  # a real rerun agrees, and its changed_when regex stays quiet
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == "6 slices: 0 written, 6 unchanged, 0 removed; manifest unchanged"
    assert not re.search(r"[1-9][0-9]* (written|removed)|manifest written", line)


@pytest.mark.parametrize(
    ("n_devices", "summary"),
    [
        (
            4,
            "4 slices: 2 would be written, 2 unchanged, 2 would be removed; "
            "manifest would be written",
        ),
        (
            9,
            "9 slices: 9 would be written, 0 unchanged, 0 would be removed; "
            "manifest would be written",
        ),
    ],
)
def test_check_with_other_count_reports_changes_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], n_devices: int, summary: str
) -> None:
    source, out = make_source(tmp_path), tmp_path / "out"
    write_slices(load(source), 6, out)
    before = snapshot(out)
    args = ["slice", "--devices", str(n_devices), "--out", str(out), "--source", str(source)]
    assert cli.main([*args, "--check"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == summary
    assert re.search(r"[1-9][0-9]* would be (written|removed)|manifest would be written", line)
    assert not re.search(r"[1-9][0-9]* (written|removed)|manifest written", line)
    assert snapshot(out) == before
    # The real run then does exactly what --check announced.
    assert cli.main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == summary.replace("would be ", "")


def test_check_without_out_dir_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, out = make_source(tmp_path), tmp_path / "missing" / "out"
    args = ["slice", "--devices", "3", "--out", str(out), "--source", str(source), "--check"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "3 slices: 3 would be written, 0 unchanged, 0 would be removed; manifest would be written"
    )
    assert not (tmp_path / "missing").exists()


def test_check_matches_the_real_run_results(tmp_path: Path) -> None:
    source, out = make_source(tmp_path), tmp_path / "out"
    write_slices(load(source), 5, out)
    for n_devices in (5, 3, 8):
        checked, check_windows = write_slices(load(source), n_devices, out, check=True)
        real, real_windows = write_slices(load(source), n_devices, out)
        assert checked == real and check_windows == real_windows


def test_timestamps_in_scientific_notation_keep_their_exponent(tmp_path: Path) -> None:
    """The published file writes Java doubles ("1.5945120943859746E9"). Read without the
    exponent, that reading would sort before one at 1594512090.0 instead of after it."""
    rows = [
        ("1.5945120943859746E9", "21.5"),  # 1594512094.39: the later reading
        ("1594512090.0", "20.5"),
        ("1.5945121E9", "22.5"),  # 1594512100.0: the latest
    ]
    lines = [
        ",".join(
            f'"{v}"' for v in (ts, mac, "0.0049", "51.0", "false", "0.0076", "false", "0.02", t)
        )
        for mac in MACS
        for ts, t in rows
    ]
    source = tmp_path / "sci.csv"
    source.write_bytes(HEADER_LINE + "".join(f"{line}\n" for line in lines).encode())

    write_slices(load(source), 3, tmp_path / "out")

    from edge_agent.dataset import read_slice

    readings = read_slice(str(tmp_path / "out" / "device-0001.csv"))
    try:
        stamps = [readings.ts_at(i) for i in range(len(readings))]
    finally:
        readings.close()
    assert stamps == sorted(stamps)
    assert stamps == pytest.approx([1594512090.0, 1594512094.3859746, 1594512100.0])
