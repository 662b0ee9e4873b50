"""The project's detectors on the Numenta Anomaly Benchmark (NAB v1.1), scored by NAB's rules.

    .venv/bin/python bench/nab_eval.py [--nab ../shared/nab] [--out DIR]

Detection. Each NAB series (`timestamp,value`) goes, one row at a time, through a fresh
AnomalyEngine configured as `edge-anomaly score` configures it for a one-column file (the
same function, edge_consumer.anomaly.cli.column_config): seq = the row, `now` = its
timestamp, no look-ahead. A row's anomaly score is 1.0 if observe() returned an anomaly on
that row (the row where the service would publish it: a spike is known only when it comes
back, so it is scored there, not at its first reading), else 0.0. The service's detectors
say yes or no, so the scores are binary.

Scoring is NAB's sweeper (nab/sweeper.py, v1.1), written out here:
- the first 15% of each file's rows (at most 750) are probationary and count for nothing;
- a row in a window scores, if flagged, tpWeight x scaledSigmoid(-(right - i + 1) / width)
  / scaledSigmoid(-1) (width: the window's rows); only the window's best flagged row counts
  (the earliest), and a window with no flagged row costs fnWeight;
- a flagged row outside every window costs fpWeight x scaledSigmoid(y), y = |i - right of
  the previous window| / (that window's width - 1), or y = 3 (the full cost) with no window
  before it; scaledSigmoid(y) = 2 / (1 + exp(5y)) - 1, and -1 from y = 3 on;
- the threshold is NAB's optimiser's: every file's scored rows in one list, swept from the
  highest anomaly score down, and the threshold with the best summed score wins. It is one
  threshold for every file (with binary scores it is 1.0 unless flagging nothing is better);
- scores are normalised over a set of files: 100 (S - S_null) / (S_perfect - S_null), S_null
  and S_perfect being the scores of the null detector (never flags) and of the perfect one
  (flags the first row of every window), both scored by the same code.

Output: NAB's results layout under --out (default .cache/nab/results): per file
`<detector>/<category>/<detector>_<file>.csv` (timestamp, value, anomaly_score, label,
S(t)_reward_low_FP_rate, S(t)_reward_low_FN_rate, S(t)_standard) and
`<detector>/<detector>_standard_scores.csv` (Detector, Profile, File, Threshold, Score, TP,
TN, FP, FN, Total_Count, then a Totals row), to compare line by line with NAB's published
results; and it prints one normalised score per category and overall.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, Optional

from edge_consumer.anomaly import AnomalyEngine
from edge_consumer.anomaly.cli import column_config

PROFILES: dict[str, dict[str, float]] = {
    "reward_low_FP_rate": {"tpWeight": 1.0, "fpWeight": 0.22, "fnWeight": 1.0},
    "reward_low_FN_rate": {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 2.0},
    "standard": {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 1.0},
}
PROBATION = 0.15  # share of each file's rows, at most 15% of 5000
PROBATIONARY = "probationary"  # the window name of probationary rows
DETECTOR = "edgeFleet"
PUBLISHED = {  # NAB's scoreboard, standard profile, whole corpus (58 series)
    "ARTime": 74.9,
    "HTM": 70.5,
    "CAD OSE": 69.9,
    "KNN CAD": 58.0,
    "Random Cut Forest": 51.7,
    "Twitter ADVec": 47.1,
    "windowed Gaussian": 39.6,
    "random": 11.0,
}


def scaled_sigmoid(y: float) -> float:
    """NAB's weight of a detection at relative position y (-1: a window's first row, 0: just
    past its last, > 0: after it)."""
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


MAX_TP = scaled_sigmoid(-1.0)


class Point(NamedTuple):
    row: int
    score: float  # the detector's anomaly score
    sweep: float  # what flagging this row is worth
    window: Optional[str]  # the window it is in, None outside, PROBATIONARY


class ThresholdScore(NamedTuple):
    threshold: float
    score: float
    tp: int
    tn: int
    fp: int
    fn: int
    total: int


def probation_length(rows: int) -> float:
    return min(math.floor(PROBATION * rows), PROBATION * 5000)


def sweep(
    scores: Sequence[float],
    windows: Sequence[tuple[int, int]],
    name: str,
    profile: dict[str, float],
) -> list[Point]:
    """Every row's worth if flagged (NAB's Sweeper.calcSweepScore); windows as (first, last)
    row indices, in order."""
    pending = list(windows)
    probation = probation_length(len(scores))
    out = []
    cur: Optional[tuple[int, int]] = None
    cur_name: Optional[str] = None
    prev_right: Optional[int] = None
    prev_width = 0.0
    for i, score in enumerate(scores):
        if pending and i == pending[0][0]:
            cur = pending.pop(0)
            cur_name = f"{name}|{cur[0]}"
        if cur is not None:
            width = float(cur[1] - cur[0] + 1)
            worth = scaled_sigmoid(-(cur[1] - i + 1) / width) * profile["tpWeight"] / MAX_TP
        else:
            if prev_right is None:
                y = 3.0
            else:  # NAB divides by width - 1: a one-row window is a full cost right after
                y = abs(prev_right - i) / (prev_width - 1.0) if prev_width > 1.0 else 3.0
            worth = scaled_sigmoid(y) * profile["fpWeight"]
        out.append(Point(i, score, worth, cur_name if i >= probation else PROBATIONARY))
        if cur is not None and i == cur[1]:
            prev_right, prev_width = i, float(cur[1] - cur[0] + 1)
            cur, cur_name = None, None
    return out


def by_threshold(points: Iterable[Point], profile: dict[str, float]) -> list[ThresholdScore]:
    """The score at every threshold (NAB's Sweeper.calcScoreByThreshold): at threshold t,
    every scored row with anomaly score >= t is flagged."""
    scorable = sorted(
        (p for p in points if p.window != PROBATIONARY), key=lambda p: p.score, reverse=True
    )
    parts: dict[Optional[str], float] = {None: 0.0}  # None: the false positives
    for p in scorable:
        if p.window is not None:
            parts[p.window] = -profile["fnWeight"]
    tn = sum(1 for p in scorable if p.window is None)
    fn = len(scorable) - tn
    tp = fp = 0
    out = []
    threshold = 1.1  # above every score: nothing flagged
    for p in scorable:
        if p.score != threshold:
            out.append(
                ThresholdScore(threshold, sum(parts.values()), tp, tn, fp, fn, len(scorable))
            )
            threshold = p.score
        if p.window is None:
            fp, tn = fp + 1, tn - 1
            parts[None] += p.sweep
        else:
            tp, fn = tp + 1, fn - 1
            parts[p.window] = max(parts[p.window], p.sweep)
    out.append(ThresholdScore(threshold, sum(parts.values()), tp, tn, fp, fn, len(scorable)))
    return out


def optimise(points: Iterable[Point], profile: dict[str, float]) -> ThresholdScore:
    """NAB's optimiser: the threshold with the best score over all files' rows together
    (window names carry their file's name); the highest such threshold on a tie."""
    return max(by_threshold(points, profile), key=lambda s: s.score)


def score_at(
    points: Sequence[Point], threshold: float, profile: dict[str, float]
) -> ThresholdScore:
    """One file's score with rows at or above `threshold` flagged (NAB's scoreDataSet)."""
    parts: dict[Optional[str], float] = {None: 0.0}
    tp = tn = fp = fn = 0
    for p in points:
        if p.window == PROBATIONARY:
            continue
        flagged = p.score >= threshold
        if p.window is None:
            if flagged:
                fp += 1
                parts[None] += p.sweep
            else:
                tn += 1
            continue
        parts.setdefault(p.window, -profile["fnWeight"])
        if flagged:
            tp += 1
            parts[p.window] = max(parts[p.window], p.sweep)
        else:
            fn += 1
    return ThresholdScore(threshold, sum(parts.values()), tp, tn, fp, fn, tp + tn + fp + fn)


def null_scores(rows: int) -> list[float]:
    return [0.0] * rows


def perfect_scores(rows: int, windows: Sequence[tuple[int, int]]) -> list[float]:
    out = [0.0] * rows
    for first, _ in windows:
        out[first] = 1.0
    return out


def normalised(raw: float, null: float, perfect: float) -> float:
    return 100.0 * (raw - null) / (perfect - null) if perfect != null else float("nan")


# --- NAB files ---------------------------------------------------------------------------


class Series(NamedTuple):
    name: str  # "<category>/<file>.csv"
    timestamps: list[str]
    values: list[float]
    windows: list[tuple[int, int]]  # (first, last) row of each window

    @property
    def category(self) -> str:
        return self.name.split("/")[0]


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.strip())


def load_series(path: Path, name: str, limits: Sequence[Sequence[str]]) -> Series:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]]
    t_col, v_col = header.index("timestamp"), header.index("value")
    timestamps = [r[t_col] for r in rows[1:] if r]
    values = [float(r[v_col]) for r in rows[1:] if r]
    times = [_parse_time(t) for t in timestamps]
    windows = []
    for start, end in limits:
        t0, t1 = _parse_time(start), _parse_time(end)
        inside = [i for i, t in enumerate(times) if t0 <= t <= t1]
        if inside:  # NAB's windows fall on rows: the first and last row within the limits
            windows.append((inside[0], inside[-1]))
    return Series(name, timestamps, values, windows)


def load_corpus(root: Path) -> list[Series]:
    labels = json.loads((root / "combined_windows.json").read_text())
    out = []
    for name in sorted(labels):
        path = root / "data" / name
        if path.exists():
            out.append(load_series(path, name, labels[name]))
    return out


def epoch(text: str) -> float:
    """A NAB timestamp as the CLI reads it (naive: UTC)."""
    from datetime import timezone

    return _parse_time(text).replace(tzinfo=timezone.utc).timestamp()


def detect(series: Series, kinds: Optional[frozenset[str]] = None) -> list[float]:
    """The engine over one series, streaming: 1.0 on each row where it reports an anomaly."""
    engine = AnomalyEngine(column_config("value"))
    observe = engine.observe
    out = []
    for i, (t, v) in enumerate(zip(series.timestamps, series.values)):
        ts = epoch(t)
        found = observe(series.name, i, ts, {"value": v}, now=ts)
        hit = any(kinds is None or a.kind in kinds for a in found)
        out.append(1.0 if hit else 0.0)
    return out


def write_results(
    out: Path,
    corpus: Sequence[Series],
    scores: dict[str, list[float]],
    points: dict[str, dict[str, list[Point]]],
    rows: Sequence[tuple[str, ThresholdScore]],
    threshold: float,
) -> Path:
    """NAB's results layout: per-row files and <detector>_standard_scores.csv."""
    base = out / DETECTOR
    for s in corpus:
        category, file = s.name.split("/")
        path = base / category / f"{DETECTOR}_{file}"
        path.parent.mkdir(parents=True, exist_ok=True)
        inside: set[int] = set()
        for first, last in s.windows:
            inside.update(range(first, last + 1))
        with path.open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(
                [
                    "timestamp",
                    "value",
                    "anomaly_score",
                    "label",
                    "S(t)_reward_low_FP_rate",
                    "S(t)_reward_low_FN_rate",
                    "S(t)_standard",
                ]
            )
            low_fp = points["reward_low_FP_rate"][s.name]
            low_fn = points["reward_low_FN_rate"][s.name]
            std = points["standard"][s.name]
            for i, (t, v) in enumerate(zip(s.timestamps, s.values)):
                w.writerow(
                    [
                        t,
                        repr(v),
                        scores[s.name][i],
                        int(i in inside),
                        low_fp[i].sweep,
                        low_fn[i].sweep,
                        std[i].sweep,
                    ]
                )
    table = base / f"{DETECTOR}_standard_scores.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(
            [
                "Detector",
                "Profile",
                "File",
                "Threshold",
                "Score",
                "TP",
                "TN",
                "FP",
                "FN",
                "Total_Count",
            ]
        )
        totals = [0.0, 0, 0, 0, 0, 0]
        for name, r in rows:
            w.writerow(
                [DETECTOR, "standard", name, threshold, r.score, r.tp, r.tn, r.fp, r.fn, r.total]
            )
            for k, x in enumerate((r.score, r.tp, r.tn, r.fp, r.fn, r.total)):
                totals[k] += x
        w.writerow(["Totals", "", "", "", *totals])
    return table


class Report(NamedTuple):
    threshold: float
    per_file: list[tuple[str, ThresholdScore]]
    by_category: dict[str, float]  # normalised
    overall: float
    published: float  # overall at threshold 1.0: every alarm the service would publish
    points: dict[str, dict[str, list[Point]]]  # profile -> file -> rows


def evaluate(corpus: Sequence[Series], scores: dict[str, list[float]]) -> Report:
    std = PROFILES["standard"]
    points = {
        name: {s.name: sweep(scores[s.name], s.windows, s.name, p) for s in corpus}
        for name, p in PROFILES.items()
    }
    best = optimise((p for rows in points["standard"].values() for p in rows), std)
    threshold = best.threshold
    per_file = [(s.name, score_at(points["standard"][s.name], threshold, std)) for s in corpus]
    raw = dict(per_file)
    null = {
        s.name: score_at(sweep(null_scores(len(s.values)), s.windows, s.name, std), 1.0, std).score
        for s in corpus
    }
    perfect = {
        s.name: score_at(
            sweep(perfect_scores(len(s.values), s.windows), s.windows, s.name, std), 1.0, std
        ).score
        for s in corpus
    }

    def norm(names: list[str]) -> float:
        return normalised(
            sum(raw[n].score for n in names),
            sum(null[n] for n in names),
            sum(perfect[n] for n in names),
        )

    categories = sorted({s.category for s in corpus})
    by_category = {c: norm([s.name for s in corpus if s.category == c]) for c in categories}
    everything = sum(score_at(points["standard"][s.name], 1.0, std).score for s in corpus)
    published = normalised(everything, sum(null.values()), sum(perfect.values()))
    return Report(
        threshold, per_file, by_category, norm([s.name for s in corpus]), published, points
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    here = Path(__file__).resolve().parent.parent
    parser.add_argument("--nab", default=str(here.parent / "shared" / "nab"), help="NAB root")
    parser.add_argument("--out", default=str(here / ".cache" / "nab" / "results"))
    parser.add_argument("--kinds", help="only these anomaly kinds, comma-separated")
    parser.add_argument("--files", action="store_true", help="print every file's raw score")
    args = parser.parse_args(argv)
    corpus = load_corpus(Path(args.nab))
    if not corpus:
        print(f"no NAB series under {args.nab}", file=sys.stderr)
        return 2
    kinds = frozenset(args.kinds.split(",")) if args.kinds else None
    started = time.process_time()
    scores = {s.name: detect(s, kinds) for s in corpus}
    cpu = time.process_time() - started
    rows = sum(len(s.values) for s in corpus)
    report = evaluate(corpus, scores)
    table = write_results(
        Path(args.out), corpus, scores, report.points, report.per_file, report.threshold
    )
    if args.files:
        for name, r in report.per_file:
            print(f"{r.score:8.3f}  TP {r.tp:4d}  FP {r.fp:4d}  {name}")
    print(
        f"{len(corpus)} NAB series, {rows:,} rows, {rows / cpu:,.0f} rows/s (parsing included);"
        f" threshold {report.threshold:g} (NAB's optimiser, one for all files)"
    )
    print("normalised NAB score, standard profile:")
    raw = dict(report.per_file)
    for category, value in report.by_category.items():
        names = [s.name for s in corpus if s.category == category]
        shown = f"{value:6.1f}" if math.isfinite(value) else "   n/a"
        fp = sum(raw[n].fp for n in names)
        cost = sum(raw[n].score for n in names)
        print(f"  {category:<24}{len(names):>3} files  {shown}   (raw {cost:.2f}, {fp} FP rows)")
    print(f"  {'overall':<24}{len(corpus):>3} files  {report.overall:6.1f}")
    print(f"  every alarm counted (threshold 1.0): {report.published:.1f}")
    print(f"raw scores per file: {table}")
    print(
        "published (whole corpus, 58 series): "
        + ", ".join(f"{k} {v}" for k, v in PUBLISHED.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
