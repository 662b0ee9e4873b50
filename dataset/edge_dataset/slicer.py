"""Cut a validated dataset into one contiguous, time-ordered slice per device.

Device i (1-based) replays sensor (i-1) % k of the k distinct source MACs, sorted
(edge_agent.protocol.source_index: the inventory plugin names the same sensor). The devices
of one sensor split its readings, ordered by time with exact duplicate lines removed, into
consecutive windows whose lengths differ by at most one (numpy.array_split's rule).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import operator
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from edge_agent.protocol import SOURCE_MACS, source_index

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
    order = np.argsort(ds.codes, kind="stable")
    ts, codes = ds.ts[order], ds.codes[order]
    same = codes[1:] == codes[:-1]
    if (ts[1:] < ts[:-1])[same].any():  # some sensor is not in time order in the file
        order = np.lexsort((ds.ts, ds.codes))  # stable: equal timestamps keep file order
        ts, codes = ds.ts[order], ds.codes[order]
        same = codes[1:] == codes[:-1]
    keep = np.ones(len(order), dtype=bool)
    # Exact duplicates share device and ts, so only ties need a text comparison.
    tied = np.flatnonzero((ts[1:] == ts[:-1]) & same) + 1
    seen: set[bytes] = set()
    previous = -2
    for p in tied.tolist():
        if p != previous + 1:  # a new run of equal timestamps starts at p - 1
            seen = {ds.line(order[p - 1])}
        line = ds.line(order[p])
        if line in seen:
            keep[p] = False
        seen.add(line)
        previous = p
    order, codes = order[keep], codes[keep]
    bounds = np.searchsorted(codes, np.arange(len(ds.devices) + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(len(ds.devices))]


def check_sources(ds: Dataset, allow_mismatch: bool) -> None:
    expected = len(SOURCE_MACS)
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
    for number in range(1, n_devices + 1):
        sensor, j = source_index(number, k), (number - 1) // k
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


def _sensor_blobs(ds: Dataset, per_sensor: list[np.ndarray]) -> list[tuple[bytes, np.ndarray]]:
    """Per sensor: its lines in order, each with its newline, as one bytes, plus line offsets."""
    lengths = ds.ends - ds.starts + 1
    in_file_order = all(len(rows) < 2 or bool((rows[1:] > rows[:-1]).all()) for rows in per_sensor)
    if in_file_order and len(per_sensor) <= 8:
        # The usual case (the published file is in time order): label every byte of the data
        # with its line's sensor (-1: a dropped duplicate) and pick each sensor's bytes out.
        label = np.full(ds.rows, -1, dtype=np.int8)
        for sensor, rows in enumerate(per_sensor):
            label[rows] = sensor
        data = np.frombuffer(ds.data, dtype=np.uint8, offset=int(ds.starts[0]))
        byte_label = np.repeat(label, lengths)
        blobs = [data[byte_label == sensor].tobytes() for sensor in range(len(per_sensor))]
    else:
        lines = ds.lines
        blobs = []
        for rows in per_sensor:
            taken = _take(lines, rows.tolist())
            blobs.append(b"\n".join(taken) + b"\n" if taken else b"")
    return [
        (blob, np.concatenate(([0], np.cumsum(lengths[rows]))))
        for blob, rows in zip(blobs, per_sensor)
    ]


def write_slices(
    ds: Dataset, n_devices: int, out: Path, *, check: bool = False
) -> tuple[Result, list[Window]]:
    """Write out/device-NNNN.csv and out/manifest.json, touching only files whose bytes change.

    check=True computes everything a real run would and reports what it would write or remove,
    but writes, creates and removes nothing.
    """
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

    if check:
        if out.exists() and not out.is_dir():  # the real run's mkdir would fail
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(out))
    else:
        out.mkdir(parents=True, exist_ok=True)
    exists = out.is_dir()
    blobs = _sensor_blobs(ds, per_sensor)
    width = max(4, len(str(n_devices)))
    names = [f"device-{i:0{width}d}.csv" for i in range(1, n_devices + 1)]

    def run(first: int, stop: int) -> list[tuple[bool, str]]:
        """Hash, compare and (unless check) write slices first..stop-1 (0-based)."""
        header_hash = hashlib.sha256(pub.HEADER_LINE)
        done = []
        for i in range(first, stop):
            sensor, start, end = plan[i]
            blob, offsets = blobs[sensor]
            body = blob[int(offsets[start]) : int(offsets[end])]
            digest = header_hash.copy()
            digest.update(body)
            path = out / names[i]
            changed = not (exists and _holds(path, pub.HEADER_LINE, body))
            if changed and not check:
                write_atomic(path, pub.HEADER_LINE, body)
            done.append((changed, digest.hexdigest()))
        return done

    # Hashing and file I/O release the GIL: a few threads, each with a contiguous run of slices.
    chunks = min(8, n_devices)
    bounds = [n_devices * c // chunks for c in range(chunks + 1)]
    with ThreadPoolExecutor(max_workers=min(4, chunks)) as pool:
        parts = list(pool.map(run, bounds[:-1], bounds[1:]))
    outcome = [item for part in parts for item in part]
    written = sum(changed for changed, _ in outcome)
    unchanged = n_devices - written

    result_windows = []
    for i, ((sensor, start, end), (_, digest)) in enumerate(zip(plan, outcome), start=1):
        rows = per_sensor[sensor]
        result_windows.append(
            Window(
                device_number=i,
                source_device=ds.devices[sensor],
                row_start=start,
                row_end=end,
                rows=end - start,
                ts_first=_ts_of(ds.line(rows[start])),
                ts_last=_ts_of(ds.line(rows[end - 1])),
                file=names[i - 1],
                sha256=digest,
            )
        )

    expected = set(names)
    removed = 0
    for name in sorted(os.listdir(out)) if exists else []:
        if _SLICE_FILE.fullmatch(name) and name not in expected:
            if not check:
                (out / name).unlink()
            removed += 1

    unique = sum(sizes)
    manifest = {
        "format": 1,
        "synthetic": ds.synthetic,
        "source": {"path": ds.path, "rows": ds.rows, "unique_rows": unique},
        "devices": result_windows,
    }
    body = manifest_json(manifest).encode()
    manifest_changed = not (exists and _holds(out / MANIFEST, b"", body))
    if manifest_changed and not check:
        write_atomic(out / MANIFEST, body)
    return Result(written, unchanged, removed, manifest_changed, unique), result_windows


def _take(lines: list[bytes], indices: list[int]) -> list[bytes] | tuple[bytes, ...]:
    if len(indices) < 2:  # itemgetter returns a bare item, not a tuple, for one index
        return [lines[i] for i in indices]
    taken: tuple[bytes, ...] = operator.itemgetter(*indices)(lines)
    return taken


def _holds(path: Path, header: bytes, body: bytes) -> bool:
    """Whether path is a file holding exactly header + body (size first, then the bytes)."""
    try:
        if os.stat(path).st_size != len(header) + len(body):
            return False
        with open(path, "rb") as f:
            return f.read(len(header)) == header and f.read() == body
    except OSError:
        return False


def _encode(value: object) -> str:
    """json.dumps(value) for the manifest's values, with cheap cases for int and float."""
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is float and isinstance(value, float) and math.isfinite(value):
        return repr(value)  # what json.dumps writes for a finite float
    return json.dumps(value)


def manifest_json(manifest: dict[str, object]) -> str:
    """json.dumps(manifest, indent=2, sort_keys=True) + newline, without the slow pure-Python
    indenting encoder: the device entries (flat dataclasses) are laid out here."""
    devices = manifest["devices"]
    assert isinstance(devices, list)
    head = {k: v for k, v in manifest.items() if k != "devices"}
    text = json.dumps({**head, "devices": "\0"}, indent=2, sort_keys=True)
    entries = []
    keys = sorted(vars(devices[0])) if devices else []
    prefixes = [f"      {json.dumps(k)}: " for k in keys]
    for window in devices:
        fields = vars(window)
        body = ",\n".join([p + _encode(fields[k]) for p, k in zip(prefixes, keys)])
        entries.append("    {\n" + body + "\n    }")
    listing = "[\n" + ",\n".join(entries) + "\n  ]" if entries else "[]"
    return text.replace('"\\u0000"', listing) + "\n"
