"""Per-message lines and the end-of-run summary."""

from __future__ import annotations

import io
import json

from edge_consumer.accounting import Accounting
from edge_consumer.output import json_line, make_emitters, pretty_line
from edge_consumer.summary import build_summary, print_summary, render_plain, rich_table

DEV = "02:42:ac:11:00:01"
TOPIC = f"iot/telemetry/{DEV}"
BODY = {
    "device_id": DEV,
    "device_name": "pi-0001",
    "ts": 1000.0,
    "seq": 3,
    "data": {
        "temp": 21.46,
        "humidity": 50,
        "co": 0.004956,
        "lpg": 0.2,
        "smoke": 0.3,
        "light": True,
        "motion": False,
    },
    "stats": {"overflow": 5, "reconnects": 1},
}


def filled() -> Accounting:
    acc = Accounting()
    for seq in (3, 5, 5):
        acc.handle(TOPIC, json.dumps(dict(BODY, seq=seq)).encode(), 1000.02)
    acc.handle(TOPIC, b"{", 1000.03)
    acc.handle_status(f"iot/status/{DEV}", b"offline", 1000.04)
    return acc


def test_pretty_and_json_lines() -> None:
    acc = Accounting()
    t = acc.handle(TOPIC, json.dumps(BODY).encode(), 1000.012)
    line = pretty_line(TOPIC, b"", t, 1000.012)
    assert f"pi-0001 [{DEV}] seq=3 temp=21.5°C hum=50.0% co=0.0050" in line
    assert line.endswith("light=on motion=no latency=12ms")
    assert "INVALID not_json" in pretty_line(TOPIC, b"{", "not_json", 1.0)
    record = json.loads(json_line(TOPIC, b"", t, 1000.5))
    assert record["type"] == "telemetry" and record["message"]["seq"] == 3
    assert record["latency"] == 0.5
    assert json.loads(json_line(TOPIC, b"xx", "oversize", 1.0))["bytes"] == 2


def test_none_format_has_no_emitters() -> None:
    assert make_emitters("none", io.StringIO()) == (None, None)
    out = io.StringIO()
    _, status = make_emitters("json", out)
    assert status is not None
    status(DEV, "online", True, 1.0)
    assert json.loads(out.getvalue())["retained"] is True


def test_summary_totals_and_plain_table() -> None:
    summary = build_summary(filled(), elapsed=2.0)
    t = summary["totals"]
    assert (t["received"], t["valid"], t["invalid"], t["gaps"], t["duplicates"]) == (4, 3, 1, 1, 1)
    assert (t["agent_overflow"], t["agent_reconnects"], t["offline"]) == (5, 1, 1)
    assert summary["invalid_by_reason"] == {"not_json": 1}
    text = render_plain(summary)
    header, row, total = text.splitlines()
    assert header.split()[:4] == ["device", "name", "status", "recv"]
    assert header.split()[6:9] == ["gaps", "dups", "resets"]
    assert row.split()[:10] == [DEV, "pi-0001", "offline", "4", "3", "1", "1", "1", "0", "5"]
    assert total.startswith(
        "TOTAL devices=1 received=4 valid=3 invalid=1 gaps=1 duplicates=1 resets=0"
    )
    assert (t["resets"], summary["devices"][0]["resets"]) == (0, 0)
    assert total.endswith("invalid_by_reason=not_json:1")
    json.dumps(summary)  # --summary-json must serialise


def test_print_summary_is_plain_text_when_not_a_terminal() -> None:
    out = io.StringIO()
    print_summary(build_summary(filled(), 1.0), out)
    assert "\x1b[" not in out.getvalue() and "TOTAL devices=1" in out.getvalue()


def test_rich_table_renders() -> None:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200)
    console.print(rich_table(build_summary(filled(), 1.0)))
    assert "pi-0001" in console.file.getvalue()  # type: ignore[attr-defined]
