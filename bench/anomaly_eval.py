"""Anomaly detection against seeded faults: precision, recall, delay, false alarms, speed.

In process, no MQTT. The dataset (the real file at data/iot_telemetry_data.csv when present,
else the SYNTHETIC replica; or --source) is cut by the project's slicer into one slice per
device, as the fleet's deploy does (200 devices by default). Each device replays its slice
once, as the agent does: one publish slot every 5 s (device i offset by i x 5/N s), the
reading of row `seq` passed through the agent's own FaultInjector (edge_agent.faults; a
dropout slot publishes nothing and seq waits), into one AnomalyEngine with the arrival time
as `now`; the engine's tick(now) runs at the end of every slot. The episodes are recomputed
from (seed, device_id) with edge_agent.faults.schedule: nothing in the readings marks them.

Matching. An alarm is "emitted at" the reading whose observe() returned it (for tick(): the
last reading the device sent before its silence). It is a true positive when it is of the
episode's kind, on the same device, on one of the episode's sensors (any, for dropout), and
emitted from the episode's first faulted reading to GRACE (3) readings after its last
(dropout: from the last reading before the silence to GRACE readings after it). Every other
alarm is a false positive of its kind, and also a false alarm if emitted at a clean reading:
one outside every episode's window and not a natural glitch. Natural glitches are the
dataset's own impossible readings (edge_consumer.anomaly.limits on the published reading: a
fault may hide one); an "impossible" alarm on one is a hit, not a false alarm. An episode is
detected when at least one alarm matches it; its delay is the readings from its first faulted
reading to the first match (dropout: publish slots from the first silent one). Episodes that
run past a slice's end are left out, and alarms inside them count for nothing.

precision = matched alarms / alarms of that kind; recall = detected episodes / episodes;
false alarms per 10,000 clean readings (all kinds, then per kind). Speed: a second, fresh
engine alone over the same readings (CPU time, one clock read per pass), then the same ticks
over the whole fleet: readings per CPU-second.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter, defaultdict
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple, Optional

from edge_agent.dataset import read_slice
from edge_agent.faults import KINDS, Episode, FaultInjector, parse_spec, schedule
from edge_agent.protocol import DATA_FIELDS, NUMERIC_FIELDS
from edge_consumer.anomaly import Anomaly, AnomalyEngine, EngineConfig
from edge_consumer.anomaly.limits import impossible
from edge_dataset import cli as dataset_cli
from edge_dataset.source import resolve

GRACE = 3  # readings after an episode's last faulted one in which its alarm still counts
INTERVAL = 5.0  # s between publish slots: the fleet's PUBLISH_INTERVAL
LATENCY = 0.05  # s from publish to the consumer
TARGETS = {  # kind: (F1, median delay in readings)
    "spike": (0.9, 3.0),
    "stuck": (0.9, 3.0),
    "drift": (0.8, None),
    "dropout": (None, None),
}
FALSE_ALARMS_TARGET = 1.0  # per 10,000 clean readings
_values = attrgetter(*DATA_FIELDS)


class Reading(NamedTuple):
    device: str
    seq: int
    ts: float
    data: dict[str, Any]


def device_id(number: int) -> str:
    return f"0a:ed:9e:{number >> 16 & 0xFF:02x}:{number >> 8 & 0xFF:02x}:{number & 0xFF:02x}"


def make_slices(source: Optional[str], devices: int, out: Path) -> str:
    """Cut the dataset into `devices` slices in `out`; returns the slicer's summary line."""
    src = resolve(source)
    argv = ["slice", "--devices", str(devices), "--out", str(out), "--source", str(src.path)]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = dataset_cli.main(argv)
    if code != 0:
        raise SystemExit(f"slicing {src.path} failed:\n{buf.getvalue()}")
    return f"{src.path} ({src.why}): " + buf.getvalue().strip().splitlines()[-1]


class Stream(NamedTuple):
    events: list[tuple[float, Optional[Reading]]]  # (now, reading) or (now, None): tick
    episodes: dict[str, list[Episode]]
    cut: dict[str, int]  # per device: seqs from here on are past the evaluated range
    glitches: set[tuple[str, int]]
    readings: int
    silences: dict[tuple[str, int], float]  # (device, dropout start): its first silent slot


def build_stream(slices: Path, devices: int, spec_text: str) -> Stream:
    """Every device's readings and ticks in time order, with the faults applied."""
    spec = parse_spec(spec_text)
    per_device = []
    episodes: dict[str, list[Episode]] = {}
    cut: dict[str, int] = {}
    glitches: set[tuple[str, int]] = set()
    silences: dict[tuple[str, int], float] = {}
    for number in range(1, devices + 1):
        dev = device_id(number)
        rows = read_slice(str(slices / f"device-{number:04d}.csv"))
        injector = FaultInjector(spec, dev)
        # slot -> reading; silent slots stay empty
        timeline: list[Optional[Reading]] = []
        for seq in range(len(rows)):
            while injector.silent(seq):
                silences.setdefault((dev, seq), _slot_time(len(timeline), number, devices))
                timeline.append(None)
            data = injector.apply(seq, dict(zip(DATA_FIELDS, _values(rows[seq]))))
            if impossible(data, NUMERIC_FIELDS):  # as published: a fault may hide one
                glitches.add((dev, seq))
            timeline.append(Reading(dev, seq, 0.0, data))
        rows.close()
        last = len(timeline) and len(rows) - 1
        found = schedule(spec, dev, 0, last)
        episodes[dev] = [e for e in found if e.end + GRACE <= last]
        cut[dev] = min([_window(e)[0] for e in found if e.end + GRACE > last] + [last - GRACE + 1])
        per_device.append(timeline)
    events: list[tuple[float, Optional[Reading]]] = []
    readings = 0
    slots = max(len(t) for t in per_device)
    for slot in range(slots):
        for i, timeline in enumerate(per_device):
            if slot < len(timeline) and timeline[slot] is not None:
                r = timeline[slot]
                assert r is not None
                ts = _slot_time(slot, i + 1, devices)
                events.append((ts + LATENCY, r._replace(ts=ts)))
                readings += 1
        events.append(((slot + 1) * INTERVAL, None))
    return Stream(events, episodes, cut, glitches, readings, silences)


def _slot_time(slot: int, number: int, devices: int) -> float:
    """When device `number` publishes in `slot`: devices spread evenly over each slot."""
    return slot * INTERVAL + (number - 1) * INTERVAL / devices


class Alarm(NamedTuple):
    anomaly: Anomaly
    at: int  # seq of the reading it was emitted at
    slot_time: float  # consumer time it was emitted


def run_engine(stream: Stream, config: EngineConfig) -> list[Alarm]:
    """Every alarm, with the reading (and time) it was emitted at."""
    engine = AnomalyEngine(config)
    alarms: list[Alarm] = []
    last_seq: dict[str, int] = {}
    for now, r in stream.events:
        if r is None:
            alarms += [Alarm(a, last_seq[a.device_id], now) for a in engine.tick(now)]
            continue
        last_seq[r.device] = r.seq
        found = engine.observe(r.device, r.seq, r.ts, r.data, now=now)
        alarms += [Alarm(a, r.seq, now) for a in found]
    return alarms


class Timing(NamedTuple):
    observe: float  # CPU seconds for every observe() call
    tick: float  # CPU seconds for every tick() call


def time_engine(stream: Stream, config: EngineConfig) -> Timing:
    """The engine alone on the same stream, one clock read per pass. The data dicts are
    copied in arrival order first: the consumer decodes a fresh one per message, and 400k
    dicts built device by device would measure cache misses of this script, not the engine."""
    cpu = time.process_time
    engine = AnomalyEngine(config)
    observe = engine.observe
    readings = [(r.device, r.seq, r.ts, dict(r.data), now) for now, r in stream.events if r]
    started = cpu()
    for device, seq, ts, data, now in readings:
        observe(device, seq, ts, data, None, now)
    in_observe = cpu() - started
    ticks = [now for now, r in stream.events if r is None]
    tick = engine.tick  # every device known: the cost of a tick over the whole fleet
    started = cpu()
    for now in ticks:
        tick(now)
    return Timing(in_observe, cpu() - started)


def _window(e: Episode) -> tuple[int, int]:
    return (e.start - 1, e.start + GRACE) if e.kind == "dropout" else (e.start, e.end + GRACE)


def memory_per_device(stream: Stream, config: EngineConfig, devices: int = 20) -> float:
    """Bytes of engine state per device after all its readings (tracemalloc)."""
    some = {device_id(n) for n in range(1, devices + 1)}
    readings = [r for _, r in stream.events if r and r.device in some]
    tracemalloc.start()
    engine = AnomalyEngine(config)
    for r in readings:
        engine.observe(r.device, r.seq, r.ts, r.data, now=r.ts)
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return size / len(engine)


class Result(NamedTuple):
    detected: dict[tuple[str, int], float]  # (device, episode start) -> delay
    matched: Counter[str]  # alarms matched, per kind
    total: Counter[str]  # alarms, per kind
    false_clean: Counter[str]  # alarms on clean readings, per kind
    clean: int  # clean readings
    glitch_hits: int  # natural glitches flagged impossible
    multivariate: Counter[str]  # multivariate alarms: "faulted" (in a window) or "clean"


def evaluate(stream: Stream, alarms: list[Alarm]) -> Result:
    detected: dict[tuple[str, int], float] = {}
    matched: Counter[str] = Counter()
    total: Counter[str] = Counter()
    false_clean: Counter[str] = Counter()
    glitch_hits: set[tuple[str, int]] = set()
    multivariate: Counter[str] = Counter()
    by_device: dict[str, list[Alarm]] = defaultdict(list)
    for alarm in alarms:
        by_device[alarm.anomaly.device_id].append(alarm)
    windowed: dict[str, set[int]] = {}
    for dev, episodes in stream.episodes.items():
        windows = [_window(e) for e in episodes]
        windowed[dev] = {s for lo, hi in windows for s in range(lo, hi + 1)}
        for alarm in by_device.get(dev, []):
            a = alarm.anomaly
            if alarm.at >= stream.cut[dev]:
                continue
            in_window = [e for e, (lo, hi) in zip(episodes, windows) if lo <= alarm.at <= hi]
            if a.kind == "multivariate":  # no episode kind of its own: only where it fired
                multivariate["faulted" if in_window else "clean"] += 1
                total[a.kind] += 1
                if not in_window and (dev, alarm.at) not in stream.glitches:
                    false_clean[a.kind] += 1
                continue
            total[a.kind] += 1
            sensors = set(a.sensor.split(","))
            hit = [
                e
                for e in in_window
                if e.kind == a.kind and (e.kind == "dropout" or sensors & set(e.sensors))
            ]
            if hit:
                matched[a.kind] += 1
                for e in hit:
                    if e.kind == "dropout":
                        # slots from the first silent one: the alarm came that many slots later
                        delay = (alarm.slot_time - stream.silences[(dev, e.start)]) / INTERVAL
                    else:
                        delay = alarm.at - e.start
                    key = (dev, e.start)
                    detected[key] = min(detected.get(key, delay), delay)
                continue
            if a.kind == "impossible" and (dev, a.seq) in stream.glitches:
                matched[a.kind] += 1
                glitch_hits.add((dev, a.seq))
                continue
            if not in_window and (dev, alarm.at) not in stream.glitches:
                false_clean[a.kind] += 1
    clean = sum(
        1
        for _, r in stream.events
        if r is not None
        and r.seq < stream.cut[r.device]
        and r.seq not in windowed[r.device]
        and (r.device, r.seq) not in stream.glitches
    )
    return Result(detected, matched, total, false_clean, clean, len(glitch_hits), multivariate)


def report(stream: Stream, result: Result, kinds: tuple[str, ...]) -> bool:
    """Print the table; returns whether every target was met."""
    ok = True
    print(
        f"{'fault':<9}{'episodes':>9}{'alarms':>8}{'precision':>11}{'recall':>8}{'F1':>7}"
        f"{'delay p50':>11}{'FA/10k':>8}  target"
    )
    clean = result.clean
    for kind in kinds:
        eps = [(d, e) for d, es in stream.episodes.items() for e in es if e.kind == kind]
        delays = [result.detected[(d, e.start)] for d, e in eps if (d, e.start) in result.detected]
        alarms = result.total[kind]
        precision = result.matched[kind] / alarms if alarms else float("nan")
        recall = len(delays) / len(eps) if eps else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        median = statistics.median(delays) if delays else float("nan")
        fa = 1e4 * result.false_clean[kind] / clean
        f1_target, delay_target = TARGETS[kind]
        verdict = []
        if f1_target is not None:
            met = f1 >= f1_target
            ok &= met
            verdict.append(f"F1>={f1_target} {'met' if met else 'MISSED'}")
        if delay_target is not None:
            met = median <= delay_target
            ok &= met
            verdict.append(f"delay<={delay_target:g} {'met' if met else 'MISSED'}")
        print(
            f"{kind:<9}{len(eps):>9}{alarms:>8}{precision:>11.3f}{recall:>8.3f}{f1:>7.3f}"
            f"{median:>11.1f}{fa:>8.2f}  {', '.join(verdict)}"
        )
    other = {k: n for k, n in result.false_clean.items() if k not in kinds}
    for kind, n in sorted(other.items()):
        print(
            f"{kind:<9}{'':>9}{result.total[kind]:>8}{'':>11}{'':>8}{'':>7}{'':>11}"
            f"{1e4 * n / clean:>8.2f}"
        )
    fa_total = 1e4 * sum(result.false_clean.values()) / clean
    met = fa_total <= FALSE_ALARMS_TARGET
    ok &= met
    print(
        f"false alarms: {sum(result.false_clean.values())} on {clean:,} clean readings = "
        f"{fa_total:.2f} per 10,000 (target <= {FALSE_ALARMS_TARGET:g}: "
        f"{'met' if met else 'MISSED'}); by kind: {dict(result.false_clean) or 'none'}"
    )
    print(
        f"natural glitches (the dataset's own impossible readings): {len(stream.glitches)}, "
        f"flagged impossible: {result.glitch_hits}"
    )
    if result.multivariate:
        mv = result.multivariate
        print(f"multivariate alarms: {mv['faulted']} in fault windows, {mv['clean']} elsewhere")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", help="dataset CSV (default: the real file, else the replica)")
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument(
        "--faults", default="seed=7,rate=0.01,kinds=" + "+".join(KINDS), help="fault SPEC"
    )
    parser.add_argument("--multivariate", action="store_true", help="add HalfSpaceTrees (river)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        print(make_slices(args.source, args.devices, Path(scratch)))
        started = time.perf_counter()
        stream = build_stream(Path(scratch), args.devices, args.faults)
    print(
        f"{args.devices} devices, {stream.readings:,} readings, faults {parse_spec(args.faults)}"
        f" (stream built in {time.perf_counter() - started:.1f} s)"
    )
    config = EngineConfig(multivariate=args.multivariate)
    result = evaluate(stream, run_engine(stream, config))
    ok = report(stream, result, parse_spec(args.faults).kinds)
    cpu = time_engine(stream, config)
    per_reading = (cpu.observe + cpu.tick) / stream.readings
    print(
        f"engine alone: {stream.readings / cpu.observe:,.0f} readings/s/core in observe() "
        f"({1e6 * cpu.observe / stream.readings:.1f} us each); with tick() every 5 s for "
        f"{args.devices} devices {1 / per_reading:,.0f}/s. At the fleet's 200 msg/s: "
        f"{100 * 200 * per_reading:.2f}% of a core; state "
        f"{memory_per_device(stream, config) / 1024:.1f} KiB per device"
    )
    print("all targets met" if ok else "some targets missed (see above)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
