"""bench/nab_eval.py: NAB's scoring rules on tiny constructed series."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import nab_eval as nab

STD = nab.PROFILES["standard"]
ROWS = 1000  # probation: the first 150 rows
WINDOW = (500, 599)


def flags(*rows: int, n: int = ROWS) -> list[float]:
    out = [0.0] * n
    for r in rows:
        out[r] = 1.0
    return out


def raw(scores: list[float], windows: list[tuple[int, int]], threshold: float = 1.0) -> float:
    return nab.score_at(nab.sweep(scores, windows, "f", STD), threshold, STD).score


def test_scaled_sigmoid_as_nab_describes_it() -> None:
    assert nab.scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert nab.scaled_sigmoid(0.0) == 0.0
    assert nab.scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert nab.scaled_sigmoid(3.0) == -1.0


def test_detection_at_the_window_start_scores_one() -> None:
    assert raw(flags(500), [WINDOW]) == pytest.approx(1.0)


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    late = raw(flags(550), [WINDOW])
    assert 0.0 < late < 1.0
    assert raw(flags(550, 590), [WINDOW]) == pytest.approx(late)
    assert raw(flags(500, 550, 590), [WINDOW]) == pytest.approx(1.0)
    assert raw(flags(599), [WINDOW]) == pytest.approx(nab.scaled_sigmoid(-1 / 100) / nab.MAX_TP)


def test_a_missed_window_costs_fn_weight() -> None:
    assert raw(flags(), [WINDOW]) == -1.0
    assert raw(flags(), [WINDOW, (800, 899)]) == -2.0


def test_false_positive_far_from_windows_costs_fp_weight() -> None:
    assert raw(flags(300), [WINDOW]) == pytest.approx(-1.0 - 0.11)  # no window before it
    assert raw(flags(300), []) == pytest.approx(-0.11)
    assert raw(flags(990), [(200, 209)]) == pytest.approx(-1.0 - 0.11)  # 3+ widths after
    just_after = raw(flags(600), [WINDOW]) + 1.0
    assert -0.11 < just_after < 0.0
    assert just_after == pytest.approx(0.11 * nab.scaled_sigmoid(1 / 99))


def test_probation_counts_for_nothing() -> None:
    assert nab.probation_length(ROWS) == 150
    assert nab.probation_length(10_000) == 750
    assert raw(flags(10, 149), []) == 0.0
    assert raw(flags(150), []) == pytest.approx(-0.11)


def test_one_threshold_from_the_optimiser() -> None:
    scores = [0.0] * ROWS
    scores[520] = 0.9  # a detection in the window
    scores[300] = 0.95  # a stronger false positive before it
    scores[700] = 0.5  # a weak false positive after it
    points = nab.sweep(scores, [WINDOW], "f", STD)
    best = nab.optimise(points, STD)
    assert best.threshold == 0.9  # takes the TP, pays one FP, leaves the weak one
    assert best.score == pytest.approx(raw(scores, [WINDOW], 0.9))
    assert best.score == pytest.approx(nab.score_at(points, 0.9, STD).score)
    assert (best.tp, best.fp) == (1, 1)


def test_null_normalises_to_zero_and_perfect_to_hundred() -> None:
    series = [
        nab.Series("a/x.csv", [""] * ROWS, [0.0] * ROWS, [WINDOW]),
        nab.Series("a/y.csv", [""] * ROWS, [0.0] * ROWS, [(300, 349), (700, 749)]),
        nab.Series("b/z.csv", [""] * ROWS, [0.0] * ROWS, []),
    ]
    null = nab.evaluate(series, {s.name: nab.null_scores(ROWS) for s in series})
    assert null.overall == 0.0
    assert null.by_category["a"] == 0.0
    assert math.isnan(null.by_category["b"])  # no windows: nothing to normalise by
    perfect = nab.evaluate(series, {s.name: nab.perfect_scores(ROWS, s.windows) for s in series})
    assert perfect.overall == pytest.approx(100.0)
    noisy = {s.name: nab.perfect_scores(ROWS, s.windows) for s in series}
    noisy["b/z.csv"][900] = 1.0  # one false alarm on the clean series
    assert nab.evaluate(series, noisy).overall == pytest.approx(100.0 * (6 - 0.11) / 6)


def test_windows_fall_on_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    rows = [f"2014-04-01 00:{m:02d}:00,{m}" for m in range(0, 60, 5)]
    path.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    s = nab.load_series(
        path, "c/s.csv", [["2014-04-01 00:10:00.000000", "2014-04-01 00:21:00.000000"]]
    )
    assert s.windows == [(2, 4)]
    assert s.values[3] == 15.0


def test_the_bench_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A NAB-layout folder in, NAB's results layout out; the detectors run streaming."""
    import json
    import random
    from datetime import datetime, timedelta

    rng = random.Random(5)
    start = datetime(2014, 4, 1)
    rows = []
    for i in range(2000):
        value = 20.0 + rng.gauss(0.0, 0.3) + (15.0 if i == 1500 else 0.0)
        rows.append(f"{start + timedelta(minutes=5 * i):%Y-%m-%d %H:%M:%S},{value:.3f}")
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "cat" / "one.csv").write_text("timestamp,value\n" + "\n".join(rows))
    window = [f"{start + timedelta(minutes=5 * i):%Y-%m-%d %H:%M:%S}.000000" for i in (1450, 1550)]
    (tmp_path / "combined_windows.json").write_text(json.dumps({"cat/one.csv": [window]}))
    out = tmp_path / "results"
    assert nab.main(["--nab", str(tmp_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed
    table = (out / nab.DETECTOR / f"{nab.DETECTOR}_standard_scores.csv").read_text().splitlines()
    assert table[0] == "Detector,Profile,File,Threshold,Score,TP,TN,FP,FN,Total_Count"
    assert table[1].startswith(f"{nab.DETECTOR},standard,cat/one.csv,1.0,")
    assert table[-1].startswith("Totals,")
    per_row = (out / nab.DETECTOR / "cat" / f"{nab.DETECTOR}_one.csv").read_text().splitlines()
    assert per_row[0].startswith("timestamp,value,anomaly_score,label,")
    assert len(per_row) == 2001
    flagged = [i for i, line in enumerate(per_row[1:]) if line.split(",")[2] == "1.0"]
    assert 1500 in flagged or 1501 in flagged  # the spike, once it came back
    score = float(table[1].split(",")[4])
    assert score > 0.8  # found early in its window, no false alarm
