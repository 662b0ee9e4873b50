"""Fleet check: --expect N and --expect-ids with --min-messages."""

from __future__ import annotations

from edge_consumer.accounting import DeviceStats
from edge_consumer.fleetcheck import LIST_LIMIT, evaluate


def dev(device_id: str, valid: int, invalid: int = 0) -> DeviceStats:
    d = DeviceStats(device_id, 0.0)
    d.valid = valid
    d.received = valid + invalid
    if invalid:
        d.invalid["bad_type"] = invalid
    return d


A, B, C, D = (f"02:00:00:00:00:0{i}" for i in range(1, 5))


def test_expect_count_met_when_enough_devices_reach_min_messages() -> None:
    r = evaluate([dev(A, 2), dev(B, 3), dev(C, 1)], min_messages=2, expect=2)
    assert r.met and r.ready == 2


def test_expect_count_not_met_lists_devices_heard_too_little() -> None:
    r = evaluate([dev(A, 2), dev(B, 1, invalid=4)], min_messages=2, expect=3)
    assert not r.met and r.ready == 1 and r.wanted == 3
    assert r.too_little == ((B, 1, 4),)
    lines = r.failure_lines(2)
    assert lines[0] == "fleet check failed: 1 of 3 expected devices sent >= 2 valid messages"
    assert "missing: 1 devices" in lines
    assert lines[-1] == f"heard too little (< 2 valid): {B} (1 valid, 4 invalid)"


def test_status_only_devices_count_as_never_heard() -> None:
    silent = dev(A, 0)
    silent.status = "online"
    r = evaluate([silent], min_messages=1, expect_ids=[A])
    assert not r.met and r.missing == (A,)


def test_expect_ids_met_only_when_every_id_reports() -> None:
    devices = [dev(A, 5), dev(B, 5), dev(D, 9)]
    assert evaluate(devices, 5, expect_ids=[A, B]).met
    r = evaluate(devices, 5, expect_ids=[A, B, C])
    assert not r.met and r.missing == (C,) and r.unexpected == (D,)
    assert f"missing (never heard): {C}" in r.failure_lines(5)
    # Devices outside the list are shown, met or not, and never fail the check.
    note = f"unexpected devices (not in --expect-ids): {D}"
    assert r.failure_lines(5)[-1] == note
    assert evaluate(devices, 5, expect_ids=[A, B]).note_lines() == [note]
    assert evaluate(devices, 5, expect_ids=[A, B, D]).note_lines() == []
    assert evaluate(devices, 5, expect=2).note_lines() == []


def test_expect_ids_too_little_counts_only_valid_messages() -> None:
    r = evaluate([dev(A, 1, invalid=10), dev(B, 2)], 2, expect_ids=[A, B])
    assert not r.met and r.too_little == ((A, 1, 10),) and r.missing == ()


def test_long_lists_are_truncated() -> None:
    ids = [f"02:00:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(LIST_LIMIT + 7)]
    r = evaluate([], 1, expect_ids=ids)
    assert r.failure_lines(1)[1].endswith("... and 7 more")


def test_expect_count_one_short_is_not_met() -> None:
    r = evaluate([dev(A, 2), dev(B, 2), dev(C, 1)], min_messages=2, expect=3)
    assert not r.met and (r.ready, r.wanted) == (2, 3)
