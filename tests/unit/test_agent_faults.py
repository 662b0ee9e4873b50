"""edge_agent.faults: the spec, a deterministic schedule, what each fault does, the agent hook."""

from __future__ import annotations

import json
import math
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from edge_agent.cli import main
from edge_agent.config import SETTINGS, ConfigError, load_config
from edge_agent.faults import (
    BLOCK,
    GAS,
    KINDS,
    MIN_GAP,
    WARMUP,
    Episode,
    FaultInjector,
    FaultSpec,
    block_episodes,
    parse_spec,
    schedule,
)

HEADER = '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n'
DEVICE = "0a:ed:9e:00:00:01"
BASE_ENV = {"DATASET_PATH": "/data/slice.csv", "DEVICE_ID": "02:42:ac:11:00:02"}


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)


def f32(x: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", x))[0])


def reading(i: int) -> dict[str, Any]:
    """A float32 board's reading, every value changing."""
    return {
        "temp": f32(round(20 + 0.1 * (i % 7), 1)),
        "humidity": f32(round(70 + 0.1 * (i % 11), 1)),
        "co": 0.004 + 1e-6 * i,
        "lpg": 0.007 + 1e-6 * i,
        "smoke": 0.02 + 1e-6 * i,
        "light": False,
        "motion": False,
    }


# --- the spec ------------------------------------------------------------------------------


def test_parse_spec() -> None:
    assert parse_spec("seed=7,rate=0.01,kinds=spike+stuck+drift+dropout") == FaultSpec(
        7, 0.01, KINDS
    )
    assert parse_spec("kinds=stuck+spike") == FaultSpec(0, 0.01, ("spike", "stuck"))
    assert str(parse_spec("seed=3, rate=0.02")) == "seed=3,rate=0.02,kinds=" + "+".join(KINDS)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed=x", "seed 'x' is not an integer"),
        ("rate=0", r"must be in \(0, 1\]"),
        ("rate=abc", "is not a number"),
        ("kinds=spike+bogus", "use distinct spike\\+stuck"),
        ("kinds=spike+spike", "use distinct"),
        ("speed=3", "unknown key 'speed'"),
        ("seed", "is not key=value"),
        ("seed=1,seed=2", "seed given twice"),
    ],
)
def test_parse_spec_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_spec(text)


def test_config_setting_flag_env_and_error() -> None:
    assert load_config([], BASE_ENV).faults is None  # off by default
    cfg = load_config(["--faults", "seed=7,rate=0.02"], BASE_ENV)
    assert cfg.faults == FaultSpec(7, 0.02, KINDS)
    cfg = load_config([], {**BASE_ENV, "EDGE_AGENT_FAULTS": "seed=1,kinds=dropout"})
    assert cfg.faults == FaultSpec(1, 0.01, ("dropout",))
    with pytest.raises(ConfigError) as e:
        load_config(["--faults", "rate=2"], BASE_ENV)
    assert e.value.setting == "EDGE_AGENT_FAULTS"


def test_faults_module_not_imported_unless_enabled() -> None:
    code = (
        "import sys\n"
        "from edge_agent.config import load_config\n"
        "import edge_agent.agent\n"
        "load_config([], {'DATASET_PATH': 'x', 'DEVICE_ID': '02:42:ac:11:00:02'})\n"
        "assert 'edge_agent.faults' not in sys.modules, 'imported'\n"
        "load_config(['--faults', 'seed=1'], {'DATASET_PATH': 'x', 'DEVICE_ID': "
        "'02:42:ac:11:00:02'})\n"
        "assert 'edge_agent.faults' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the schedule ---------------------------------------------------------------------------


def test_schedule_is_deterministic_per_seed_and_device() -> None:
    spec = parse_spec("seed=7,rate=0.01")
    a = schedule(spec, DEVICE, 0, 20_000)
    assert a == schedule(spec, DEVICE, 0, 20_000)
    assert a == schedule(FaultSpec(7, 0.01, KINDS), DEVICE, 0, 20_000)
    assert a != schedule(spec, "0a:ed:9e:00:00:02", 0, 20_000)
    assert a != schedule(parse_spec("seed=8,rate=0.01"), DEVICE, 0, 20_000)
    assert {e.kind for e in a} == set(KINDS)
    # Any range gives the same episodes as the whole: no history needed.
    part = schedule(spec, DEVICE, 5_000, 9_000)
    assert part == [e for e in a if e.end >= 5_000 and e.start <= 9_000]


def test_schedule_spacing() -> None:
    spec = parse_spec("seed=1,rate=0.05")
    episodes = schedule(spec, DEVICE, 0, 10 * BLOCK)
    assert episodes[0].start >= WARMUP + MIN_GAP
    for before, after in zip(episodes, episodes[1:]):
        assert after.start - before.end > MIN_GAP
    for e in episodes:
        assert e.start // BLOCK == e.end // BLOCK  # never across a block
        if e.kind == "spike":
            assert 1 <= e.length <= 3
        if e.kind == "stuck":
            assert e.sensors in (("temp", "humidity"), GAS)
    # rate: episode starts per clean reading past the minimum gap
    faulted = sum(e.length for e in episodes if e.kind != "dropout")
    clean = 10 * BLOCK - WARMUP - faulted - MIN_GAP * len(episodes)
    assert 0.04 < len(episodes) / clean < 0.06


def test_block_episodes_depend_only_on_their_block() -> None:
    spec = parse_spec("seed=2")
    assert block_episodes(spec, DEVICE, 3) == block_episodes(spec, DEVICE, 3)
    assert block_episodes(spec, DEVICE, 3) != block_episodes(spec, DEVICE, 4)


# --- what the faults do ----------------------------------------------------------------------


def faulted(spec: FaultSpec, n: int) -> tuple[list[dict[str, Any]], list[int]]:
    """The readings 0..n-1 through an injector, as the agent does; and the silent slots'
    seqs."""
    injector = FaultInjector(spec, DEVICE)
    out = []
    silent = []
    for seq in range(n):
        while injector.silent(seq):
            silent.append(seq)
        out.append(injector.apply(seq, reading(seq)))
    return out, silent


def test_apply_matches_the_schedule() -> None:
    spec = parse_spec("seed=5,rate=0.02")
    n = 3 * BLOCK
    out, silent = faulted(spec, n)
    episodes = schedule(spec, DEVICE, 0, n - 1)
    touched: dict[int, Episode] = {}
    for e in episodes:
        if e.kind != "dropout":
            for seq in range(e.start, e.end + 1):
                touched[seq] = e
    for seq in range(n):
        hit = touched.get(seq)
        clean = reading(seq)
        if hit is None:
            assert out[seq] == clean
            continue
        changed = {k for k in clean if out[seq][k] != clean[k]}
        assert changed <= set(hit.sensors)
        if hit.kind == "stuck":
            assert all(out[seq][s] == reading(hit.start)[s] for s in hit.sensors)
        elif hit.kind == "spike" and hit.sensors == ("temp",):
            assert abs(abs(out[seq]["temp"] - clean["temp"]) - abs(hit.magnitude)) < 0.11
        elif hit.kind == "drift" and seq == hit.end and hit.sensors == GAS:
            assert out[seq]["co"] == pytest.approx(clean["co"] * math.exp(hit.magnitude))
    dropouts = [e for e in episodes if e.kind == "dropout"]
    assert dropouts
    assert silent == [e.start for e in dropouts for _ in range(e.length)]


def test_faulted_values_look_like_the_board_wrote_them() -> None:
    """0.1 steps, in range, float32-widened like the board's own: nothing marks them."""
    spec = parse_spec("seed=3,rate=0.05,kinds=spike+drift")
    out, _ = faulted(spec, 2 * BLOCK)
    for r in out:
        for s in ("temp", "humidity"):
            v = r[s]
            assert f32(v) == v
            assert f32(round(v, 1)) == v
        assert 5.0 <= r["humidity"] <= 100.0
        assert r["temp"] != 0.0


def test_stuck_restart_holds_the_first_value_seen() -> None:
    spec = parse_spec("seed=4,kinds=stuck")
    e = schedule(spec, DEVICE, 0, BLOCK)[0]
    injector = FaultInjector(spec, DEVICE)
    middle = e.start + 5  # an agent restarted in the middle of the episode
    first = injector.apply(middle, reading(middle))
    later = injector.apply(middle + 1, reading(middle + 1))
    assert all(first[s] == later[s] == reading(middle)[s] for s in e.sensors)


# --- the agent's hook ------------------------------------------------------------------------


def write_slice(path: Path, rows: int) -> Path:
    rng = random.Random(0)
    lines = []
    for i in range(rows):
        values = [
            f"{1.5945120943859746e9 + 4 * i:.16E}",
            "00:0f:00:70:91:0a",
            repr(0.004 + rng.random() * 1e-3),
            repr(f32(round(75 + rng.random(), 1))),
            "false",
            repr(0.007 + rng.random() * 1e-3),
            "false",
            repr(0.02 + rng.random() * 1e-3),
            repr(f32(round(19 + rng.random(), 1))),
        ]
        lines.append(",".join(f'"{v}"' for v in values) + "\n")
    path.write_text(HEADER + "".join(lines))
    return path


def dry_run(
    path: Path, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> list[dict[str, Any]]:
    argv = ["--dataset", str(path), "--dry-run", "--count", "700", "--rate", "100000"]
    assert main([*argv, "--device-id", DEVICE, "--device-name", "pi-0001", *extra]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_agent_publishes_faulted_readings_with_contiguous_seqs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_slice(tmp_path / "slice.csv", 800)
    clean = dry_run(path, [], capsys)
    spec = "seed=18,rate=0.05"  # all four kinds in seqs 0..699
    messages = dry_run(path, ["--faults", spec], capsys)
    assert [m["seq"] for m in messages] == list(range(700))  # dropouts leave no seq gap
    episodes = schedule(parse_spec(spec), DEVICE, 0, 699)
    assert {e.kind for e in episodes} == set(KINDS)
    faulted_seqs = {s for e in episodes if e.kind != "dropout" for s in range(e.start, e.end + 1)}
    for c, m in zip(clean, messages):
        assert set(m) == set(c)  # nothing extra in a faulted payload
        assert m["source"] == c["source"]
        if m["seq"] not in faulted_seqs:
            assert m["data"] == c["data"]
    assert any(m["data"] != c["data"] for c, m in zip(clean, messages))
