"""Cut a validated dataset into one contiguous, time-ordered slice per device.

Device i (1-based) replays sensor (i-1) % k of the k distinct source MACs (sorted). The devices
of one sensor split its readings, ordered by time with exact duplicate lines removed, into
consecutive windows whose lengths differ by at most one (numpy.array_split's rule).
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import published as pub
from .atomic import write_atomic
from .reader import Dataset, DatasetError

MANIFEST = "manifest.json"
_SLICE_FILE = re.compile(r"device-\d+\.csv")


@dataclass(frozen=True)
class Window:
    device_number: int
    source_device: str
    row_start: int  # index into the sensor's time-sorted, de-duplicated readings
    row_end: int  # exclusive
    rows: int
    ts_first: float
    ts_last: float
    file: str
    sha256: str


@dataclass(frozen=True)
class Result:
    written: int
    unchanged: int
    removed: int
    manifest_written: bool
    unique_rows: int


def sensor_rows(ds: Dataset) -> list[np.ndarray]:
    """Per device code: its line indices in time order (file order on ties), no duplicates."""
    order = np.lexsort((ds.ts, ds.codes))  # stable: equal timestamps keep file order
    ts, codes = ds.ts[order], ds.codes[order]
    keep = np.ones(len(order), dtype=bool)
    # Exact duplicates share device and ts, so only ties need a text comparison.
    tied = np.flatnonzero((ts[1:] == ts[:-1]) & (codes[1:] == codes[:-1])) + 1
    seen: set[bytes] = set()
    previous = -2
    for p in tied.tolist():
        if p != previous + 1:  # a new run of equal timestamps starts at p - 1
            seen = {ds.lines[order[p - 1]]}
        line = ds.lines[order[p]]
        if line in seen:
            keep[p] = False
        seen.add(line)
        previous = p
    order, codes = order[keep], codes[keep]
    bounds = np.searchsorted(codes, np.arange(len(ds.devices) + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(len(ds.devices))]


def check_sources(ds: Dataset, allow_mismatch: bool) -> None:
    expected = len(pub.MACS)
    if len(ds.devices) != expected and not allow_mismatch:
        raise DatasetError(
            ds.path,
            f"expected {expected} source devices, found {len(ds.devices)} "
            f"({', '.join(ds.devices)}); --allow-sources-mismatch slices it anyway",
        )


def windows(sensor_sizes: list[int], n_devices: int) -> list[tuple[int, int, int]]:
    """(sensor, row_start, row_end) for devices 1..n_devices; raises ValueError if too few rows."""
    k = len(sensor_sizes)
    out = []
    for i in range(n_devices):
        sensor, j = i % k, i // k
        share = len(range(sensor, n_devices, k))  # devices replaying this sensor
        size = sensor_sizes[sensor]
        if size < share:
            raise ValueError(f"{n_devices} devices need {share} readings from sensor {sensor}")
        base, extra = divmod(size, share)
        start = j * base + min(j, extra)
        out.append((sensor, start, start + base + (1 if j < extra else 0)))
    return out


def _ts_of(line: bytes) -> float:
    return float(line.split(b",", 1)[0].strip(b'"'))


def write_slices(ds: Dataset, n_devices: int, out: Path) -> tuple[Result, list[Window]]:
    """Write out/device-NNNN.csv and out/manifest.json, touching only files whose bytes change."""
    per_sensor = sensor_rows(ds)
    sizes = [len(rows) for rows in per_sensor]
    try:
        plan = windows(sizes, n_devices)
    except ValueError:
        short = min(
            range(len(sizes)), key=lambda s: sizes[s] - len(range(s, n_devices, len(sizes)))
        )
        need = len(range(short, n_devices, len(sizes)))
        raise DatasetError(
            ds.path,
            f"{n_devices} devices need {need} readings from {ds.devices[short]}, "
            f"it has {sizes[short]}",
        ) from None

    # One blob per sensor in time order; a device's slice is a byte range of it.
    blobs, offsets = [], []
    for rows in per_sensor:
        lines = _take(ds.lines, rows.tolist())
        blobs.append(b"\n".join(lines) + b"\n")
        lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines)) + 1
        offsets.append(np.concatenate(([0], np.cumsum(lengths))).tolist())

    out.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(n_devices)))
    header_hash = hashlib.sha256(pub.HEADER_LINE)
    jobs = []
    result_windows = []
    for i, (sensor, start, end) in enumerate(plan, start=1):
        body = blobs[sensor][offsets[sensor][start] : offsets[sensor][end]]
        name = f"device-{i:0{width}d}.csv"
        digest = header_hash.copy()
        digest.update(body)
        jobs.append((out / name, body, pub.HEADER_LINE))
        first_line = ds.lines[int(per_sensor[sensor][start])]
        last_line = ds.lines[int(per_sensor[sensor][end - 1])]
        result_windows.append(
            Window(
                device_number=i,
                source_device=ds.devices[sensor],
                row_start=start,
                row_end=end,
                rows=end - start,
                ts_first=_ts_of(first_line),
                ts_last=_ts_of(last_line),
                file=name,
                sha256=digest.hexdigest(),
            )
        )
    # File creation dominates on a busy disk; the syscalls release the GIL, so overlap them.
    with ThreadPoolExecutor(max_workers=4) as pool:
        changed = list(pool.map(lambda job: _write_if_changed(*job), jobs))
    written = sum(changed)
    unchanged = len(changed) - written

    expected = {w.file for w in result_windows}
    removed = 0
    for path in sorted(out.iterdir()):
        if _SLICE_FILE.fullmatch(path.name) and path.name not in expected:
            path.unlink()
            removed += 1

    unique = sum(sizes)
    manifest = {
        "format": 1,
        "synthetic": ds.synthetic,
        "source": {"path": ds.path, "rows": ds.rows, "unique_rows": unique},
        "devices": result_windows,
    }
    manifest_written = _write_if_changed(out / MANIFEST, manifest_json(manifest).encode())
    return Result(written, unchanged, removed, manifest_written, unique), result_windows


def _take(lines: list[bytes], indices: list[int]) -> list[bytes] | tuple[bytes, ...]:
    if len(indices) < 2:  # itemgetter returns a bare item, not a tuple, for one index
        return [lines[i] for i in indices]
    return operator.itemgetter(*indices)(lines)


def _write_if_changed(path: Path, body: bytes, header: bytes = b"") -> bool:
    """Write header + body atomically unless path already holds exactly those bytes."""
    try:
        if os.stat(path).st_size == len(header) + len(body):
            current = path.read_bytes()
            if current[: len(header)] == header and current[len(header) :] == body:
                return False
    except OSError:
        pass
    write_atomic(path, header, body)
    return True


def manifest_json(manifest: dict[str, object]) -> str:
    """json.dumps(manifest, indent=2, sort_keys=True) + newline, without the slow pure-Python
    indenting encoder: the device entries (flat dataclasses) are laid out here."""
    devices = manifest["devices"]
    head = {k: v for k, v in manifest.items() if k != "devices"}
    text = json.dumps({**head, "devices": "\0"}, indent=2, sort_keys=True)
    entries = []
    for window in devices:  # type: ignore[attr-defined]
        fields = sorted(vars(window).items())
        body = ",\n".join(f"      {json.dumps(k)}: {json.dumps(v)}" for k, v in fields)
        entries.append("    {\n" + body + "\n    }")
    listing = "[\n" + ",\n".join(entries) + "\n  ]" if entries else "[]"
    return text.replace('"\\u0000"', listing) + "\n"
