"""Pacing between readings and reconnect backoff."""

from __future__ import annotations

from pathlib import Path

import pytest
from edge_agent.dataset import read_slice
from edge_agent.pacing import Pacer
from edge_agent.publisher import BACKOFF_CAP, backoff_delay


@pytest.fixture
def readings(tmp_path: Path):  # type: ignore[no-untyped-def]
    rows = ["1000.0", "1003.0", "1003.0", "1002.0", "1010.0"]  # equal and backwards steps too
    text = '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n' + "".join(
        f'"{ts}","d","0.1","50","false","0.2","false","0.3","20"\n' for ts in rows
    )
    path = tmp_path / "s.csv"
    path.write_text(text)
    s = read_slice(str(path))
    yield s
    s.close()


def test_interval_and_rate(readings) -> None:  # type: ignore[no-untyped-def]
    assert Pacer(5.0).gap_after(0) == 5.0
    assert Pacer(5.0, rate=20).gap_after(3) == 0.05


def test_replay_speed_divides_original_gaps(readings) -> None:  # type: ignore[no-untyped-def]
    p = Pacer(7.0, replay_speed=3.0, readings=readings)
    assert [p.gap_after(i) for i in range(4)] == [1.0, 0.0, 0.0, 8.0 / 3.0]
    assert p.gap_after(4) == 7.0  # wrap-around gap is the interval


def test_replay_needs_readings() -> None:
    with pytest.raises(ValueError):
        Pacer(1.0, replay_speed=2.0)


def test_backoff_full_jitter_capped() -> None:
    assert [backoff_delay(n, lambda lo, hi: hi) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    assert backoff_delay(1000, lambda lo, hi: hi) == BACKOFF_CAP
    assert backoff_delay(3, lambda lo, hi: lo) == 0.0  # full jitter: may retry at once
    delays = {backoff_delay(3) for _ in range(50)}
    assert len(delays) > 1 and all(0 <= d <= 8 for d in delays)
