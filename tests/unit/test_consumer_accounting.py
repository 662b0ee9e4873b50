"""Seq, gap, duplicate, latency and status accounting."""

from __future__ import annotations

import json
import random

import pytest
from edge_consumer.accounting import Accounting, Histogram, SeqSet, latency_bucket

DEV = "02:42:ac:11:00:01"
TOPIC = f"iot/telemetry/{DEV}"


def body(
    seq: int, ts: float = 100.0, device: str = DEV, epoch: int | None = None, **stats: int
) -> bytes:
    message: dict[str, object] = {
        "device_id": device,
        "device_name": "pi-0001",
        "ts": ts,
        "seq": seq,
        "data": {
            "temp": 21.5,
            "humidity": 50,
            "co": 0.1,
            "lpg": 0.2,
            "smoke": 0.3,
            "light": True,
            "motion": False,
        },
    }
    if stats:
        message["stats"] = stats
    if epoch is not None:
        message["epoch"] = epoch
    return json.dumps(message).encode()


def feed(acc: Accounting, seqs: list[int], device: str = DEV, epoch: int | None = None) -> None:
    for seq in seqs:
        acc.handle(f"iot/telemetry/{device}", body(seq, device=device, epoch=epoch), 100.5)


def test_in_order_is_one_run_without_gaps_or_duplicates() -> None:
    acc = Accounting()
    feed(acc, list(range(1000)))
    dev = acc.devices[DEV]
    assert (dev.valid, dev.gaps, dev.duplicates) == (1000, 0, 0)
    assert dev.seqs.starts == [0] and dev.seqs.ends == [1000]


def test_gaps_are_missing_seqs_between_min_and_max() -> None:
    acc = Accounting()
    feed(acc, [5, 6, 9, 12])
    dev = acc.devices[DEV]
    assert dev.gaps == 4  # 7, 8, 10, 11; nothing below the first seq seen counts
    assert dev.seqs.missing_ranges() == [(7, 8), (10, 11)]
    assert (dev.seqs.min, dev.seqs.max) == (5, 12)


def test_duplicates_are_valid_minus_distinct() -> None:
    acc = Accounting()
    feed(acc, [0, 1, 1, 2, 0, 2, 2])
    dev = acc.devices[DEV]
    assert (dev.valid, dev.seqs.distinct, dev.duplicates, dev.gaps) == (7, 3, 4, 0)


def test_out_of_order_fill_merges_runs_back_into_the_watermark() -> None:
    s = SeqSet()
    for seq in [0, 1, 2, 5, 6, 3, 9, 4, 8, 7]:
        assert s.add(seq)
    assert s.starts == [0] and s.ends == [10] and s.gaps == 0
    assert not s.add(4) and not s.add(0) and not s.add(9)


def test_seq_below_the_first_seen_extends_downwards() -> None:
    s = SeqSet()
    for seq in [10, 11, 8, 9, 3]:
        s.add(seq)
    assert s.starts == [3, 8] and s.ends == [4, 12]
    assert s.gaps == 4 and 3 in s and 5 not in s


def test_agent_restart_replays_duplicates_never_gaps() -> None:
    acc = Accounting()
    feed(acc, list(range(100)) + list(range(90, 150)))
    dev = acc.devices[DEV]
    assert (dev.gaps, dev.duplicates, dev.seqs.distinct) == (0, 10, 150)


def test_same_epoch_replays_are_duplicates_as_before() -> None:
    acc = Accounting()
    feed(acc, list(range(100)) + list(range(90, 150)), epoch=7)
    dev = acc.devices[DEV]
    assert (dev.gaps, dev.duplicates, dev.resets, dev.epoch) == (0, 10, 0, 7)


def test_new_epoch_at_seq_0_is_a_reset_not_duplicates() -> None:
    acc = Accounting()
    feed(acc, list(range(50)), epoch=7)
    feed(acc, list(range(20)), epoch=8)  # state wiped: seq 0 again, a new epoch
    dev = acc.devices[DEV]
    assert (dev.resets, dev.duplicates, dev.gaps, dev.epoch) == (1, 0, 0, 8)
    assert (dev.valid, dev.seqs.min, dev.seqs.max) == (70, 0, 19)  # tracking restarted
    feed(acc, [19, 25], epoch=8)  # within the new epoch: counted as usual
    assert (dev.resets, dev.duplicates, dev.gaps) == (1, 1, 5)


def test_reset_keeps_the_old_epochs_gaps_and_counts_each_reset() -> None:
    acc = Accounting()
    feed(acc, [0, 1, 5], epoch=1)  # 3 missing
    feed(acc, [0, 1], epoch=2)
    feed(acc, [0, 0], epoch=3)
    dev = acc.devices[DEV]
    assert (dev.resets, dev.gaps, dev.duplicates, dev.valid) == (2, 3, 1, 7)


def test_messages_without_epoch_and_an_agent_upgrade_are_not_resets() -> None:
    acc = Accounting()
    feed(acc, list(range(10)))  # an agent from before epochs
    feed(acc, list(range(8, 12)), epoch=5)  # upgraded: same seqs, first epoch heard
    feed(acc, [12])  # no epoch: nothing to compare, the current one stays
    dev = acc.devices[DEV]
    assert (dev.resets, dev.duplicates, dev.gaps, dev.epoch) == (0, 2, 0, 5)


def test_resets_are_per_device_and_in_the_summary() -> None:
    from edge_consumer.summary import build_summary, render_plain

    other = "02:42:ac:11:00:02"
    acc = Accounting()
    feed(acc, [0, 1], epoch=1)
    feed(acc, [0, 1], epoch=2)
    feed(acc, [0, 1], device=other, epoch=1)
    assert (acc.devices[DEV].resets, acc.devices[other].resets) == (1, 0)
    summary = build_summary(acc, 1.0)
    assert summary["totals"]["resets"] == 1
    assert {d["device_id"]: d["resets"] for d in summary["devices"]} == {DEV: 1, other: 0}
    assert " resets=1 " in render_plain(summary)


@pytest.mark.parametrize("seed", range(5))
def test_random_order_matches_a_plain_set(seed: int) -> None:
    rng = random.Random(seed)
    seqs = [rng.randrange(0, 300) for _ in range(2000)]
    s = SeqSet()
    for seq in seqs:
        s.add(seq)
    truth = set(seqs)
    assert s.distinct == len(truth)
    assert s.gaps == max(truth) - min(truth) + 1 - len(truth)
    assert all((x in s) == (x in truth) for x in range(-5, 310))
    assert all(a < b for a, b in zip(s.ends, s.starts[1:]))  # disjoint, non-adjacent runs


def test_memory_stays_small_for_millions_in_order() -> None:
    s = SeqSet()
    for seq in range(2_000_000):
        s.add(seq)
    assert len(s.starts) == 1 and s.distinct == 2_000_000


def test_invalid_messages_count_per_device_and_reason() -> None:
    acc = Accounting()
    acc.handle(TOPIC, b"\xff", 1.0)
    acc.handle(TOPIC, b"{", 1.0)
    acc.handle("elsewhere/x", b"{}", 1.0)
    dev = acc.devices[DEV]
    assert dev.received == 2 and dev.valid == 0
    assert dev.invalid == {"not_utf8": 1, "not_json": 1}
    assert acc.invalid["bad_topic"] == 1 and acc.invalid_total == 3 and acc.received == 3


def test_latency_quantiles_within_five_percent() -> None:
    h = Histogram()
    for ms in range(1, 1001):
        h.add(ms / 1000)
    p50, p99 = h.quantile(0.5), h.quantile(0.99)
    assert p50 is not None and p99 is not None
    assert 0.5 <= p50 <= 0.5 * 1.05 + 1e-9
    assert 0.99 <= p99 <= 0.99 * 1.05 + 1e-9
    assert Histogram().quantile(0.5) is None
    assert latency_bucket(-3.0) == 0 and latency_bucket(1e30) == latency_bucket(1e40)


def test_latency_is_receive_time_minus_payload_ts() -> None:
    acc = Accounting()
    acc.handle(TOPIC, body(0, ts=100.0), 100.25)
    p50 = acc.devices[DEV].latency.quantile(0.5)
    assert p50 is not None and 0.25 <= p50 <= 0.25 * 1.05


def test_agent_stats_take_the_latest_values() -> None:
    acc = Accounting()
    acc.handle(TOPIC, body(0, overflow=1, reconnects=0), 1.0)
    acc.handle(TOPIC, body(1, overflow=4, reconnects=2, skipped_rows=3), 2.0)
    dev = acc.devices[DEV]
    assert (dev.agent_overflow, dev.agent_reconnects, dev.agent_skipped) == (4, 2, 3)


def test_status_transitions_and_reconnects() -> None:
    acc = Accounting()
    status = f"iot/status/{DEV}"
    for payload in [b"online", b"offline", b"online", b"online", b"", b"garbage"]:
        acc.handle_status(status, payload, 1.0)
    dev = acc.devices[DEV]
    assert dev.status == "online"
    assert dev.status_changes == 2 and dev.onlines == 3 and dev.status_reconnects == 2
    assert dev.received == 0  # status alone is not telemetry
    assert acc.bad_status == 1
    assert acc.handle_status("iot/status/a/b", b"online", 1.0) is None and acc.bad_status == 2


def test_rate_uses_first_and_last_telemetry() -> None:
    acc = Accounting()
    acc.handle_status(f"iot/status/{DEV}", b"online", 0.0)
    for i in range(11):
        acc.handle(TOPIC, body(i), 10.0 + i)
    assert acc.devices[DEV].rate == pytest.approx(1.0)
