"""AnomalyEngine: per-device state, seq order, one record per episode and chip, JSON, river."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest
from edge_agent.protocol import ANOMALY_PREFIX, anomaly_topic
from edge_consumer.anomaly import DEVICE, Anomaly, AnomalyEngine, EngineConfig
from edge_consumer.anomaly import multivariate as mv

DEV = "0a:ed:9e:00:00:01"


def reading(rng: random.Random, i: int) -> dict[str, Any]:
    co = 0.005 * math.exp(rng.gauss(0.0, 0.02))
    return {
        "temp": round(22.0 + rng.gauss(0.0, 0.3), 1),
        "humidity": round(50.0 + rng.gauss(0.0, 0.8), 1),
        "co": co,
        "lpg": 0.007 * (co / 0.005) ** 0.72,
        "smoke": 0.02 * (co / 0.005) ** 0.77,
        "light": False,
        "motion": i % 100 == 0,
    }


def feed(
    engine: AnomalyEngine, rows: list[dict[str, Any]], device: str = DEV, start: int = 0
) -> list[tuple[int, Anomaly]]:
    found = []
    for seq, data in enumerate(rows, start):
        for a in engine.observe(device, seq, 5.0 * seq, data, now=5.0 * seq + 0.1):
            found.append((seq, a))
    return found


def clean(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [reading(rng, i) for i in range(n)]


def test_clean_readings_raise_nothing() -> None:
    assert feed(AnomalyEngine(), clean(20_000)) == []


def test_gas_stuck_is_one_record_for_the_chip() -> None:
    rows = clean(600)
    for i in range(400, 460):
        rows[i] = {**rows[i], **{k: rows[400][k] for k in ("co", "lpg", "smoke")}}
    found = feed(AnomalyEngine(), rows)
    assert len(found) == 1
    seq, a = found[0]
    assert (a.kind, a.sensor, a.device_id) == ("stuck", "co,lpg,smoke", DEV)
    assert seq - 400 <= 3


def test_spike_then_glitch() -> None:
    rows = clean(600)
    rows[300] = {**rows[300], "humidity": rows[300]["humidity"] + 25.0}
    rows[500] = {**rows[500], "temp": 0.0, "humidity": 1.1}  # the dataset's failed read
    found = [a for _, a in feed(AnomalyEngine(), rows)]
    assert [(a.kind, a.sensor, a.seq) for a in found] == [
        ("spike", "humidity", 300),
        ("impossible", "temp,humidity", 500),
    ]
    assert found[1].detail.startswith("temp 0.0 with humidity 1.1")


def test_duplicates_and_late_readings_are_ignored() -> None:
    engine = AnomalyEngine()
    rows = clean(400)
    feed(engine, rows)
    last = rows[-1]
    # A redelivered reading repeated many times must not look like a stuck sensor.
    for _ in range(50):
        assert engine.observe(DEV, 399, 5.0 * 399, last, now=2000.0) == []
        assert engine.observe(DEV, 10, 50.0, last, now=2000.0) == []


def test_new_epoch_restarts_seq_order() -> None:
    engine = AnomalyEngine()
    feed(engine, clean(300))
    found = engine.observe(DEV, 0, 5.0 * 300, clean(1, seed=2)[0], epoch=42, now=1500.1)
    assert found == []
    assert engine.observe(DEV, 0, 5.0 * 300, clean(1, seed=2)[0], epoch=42, now=1500.2) == []


def test_dropout_by_tick_and_by_arrival() -> None:
    engine = AnomalyEngine()
    feed(engine, clean(100))
    feed(engine, clean(100), device="0a:ed:9e:00:00:02")
    assert engine.tick(5.0 * 99 + 10.0) == []
    found = engine.tick(5.0 * 99 + 16.0)
    assert {a.device_id for a in found} == {DEV, "0a:ed:9e:00:00:02"}
    assert all(a.kind == "dropout" and a.sensor == DEVICE and a.seq == 99 for a in found)
    assert engine.tick(5.0 * 99 + 60.0) == []  # once per silence
    # No ticks for this one: its silence is found when it speaks again.
    engine.forget("0a:ed:9e:00:00:02")
    feed(engine, clean(100, seed=3), device="0a:ed:9e:00:00:03")
    late = engine.observe("0a:ed:9e:00:00:03", 100, 5.0 * 130, clean(1)[0], now=650.1)
    assert [(a.kind, a.seq) for a in late] == [("dropout", 99)]  # the silence began there
    assert late[0].value == pytest.approx(155.0)
    assert len(engine) == 2


def test_anomaly_json_and_topic() -> None:
    a = Anomaly(DEV, "temp", "spike", 7, 1.5e9, 35.2, float("inf"), "temp 35.2")
    assert json.loads(a.to_json()) == {
        "device_id": DEV,
        "sensor": "temp",
        "kind": "spike",
        "seq": 7,
        "ts": 1.5e9,
        "value": 35.2,
        "score": None,
        "detail": "temp 35.2",
    }
    assert ANOMALY_PREFIX == "iot/anomaly"
    assert anomaly_topic(DEV) == f"iot/anomaly/{DEV}"


def test_multivariate_needs_river(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mv, "available", lambda: False)
    with pytest.raises(RuntimeError, match="needs river"):
        AnomalyEngine(EngineConfig(multivariate=True))
    assert len(AnomalyEngine()) == 0  # everything else works without it


def test_multivariate_with_river() -> None:
    pytest.importorskip("river")
    engine = AnomalyEngine(EngineConfig(multivariate=True))
    rows = clean(1200)
    found = feed(engine, rows)
    hst = engine._devices[DEV].hst
    assert hst is not None and 0.0 <= hst.score <= 1.0
    assert all(a.kind == "multivariate" for _, a in found)
