"""End-of-run summary: a JSON-able dict, a plain-text table (logs, Ansible) or a rich table."""

from __future__ import annotations

from typing import Any, Optional, TextIO

from .accounting import Accounting, DeviceStats

COLUMNS = (
    "device",
    "name",
    "status",
    "recv",
    "valid",
    "invalid",
    "gaps",
    "dups",
    "resets",
    "overflow",
    "reconn",
    "rate/s",
    "p50 ms",
    "p99 ms",
)


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000.0, 2)


def device_record(dev: DeviceStats) -> dict[str, Any]:
    return {
        "device_id": dev.device_id,
        "name": dev.name,
        "status": dev.status,
        "status_changes": dev.status_changes,
        "status_reconnects": dev.status_reconnects,
        "received": dev.received,
        "valid": dev.valid,
        "invalid": dev.invalid_total,
        "invalid_by_reason": dict(dev.invalid),
        # distinct_seqs, seq_min, seq_max and missing_ranges are the current epoch's; gaps
        # and duplicates count over all epochs.
        "epoch": dev.epoch,
        "distinct_seqs": dev.seqs.distinct,
        "seq_min": dev.seqs.min,
        "seq_max": dev.seqs.max,
        "gaps": dev.gaps,
        "missing_ranges": dev.seqs.missing_ranges(),
        "duplicates": dev.duplicates,
        "resets": dev.resets,
        "first_seen": dev.first_seen if dev.received else None,
        "last_seen": dev.last_seen if dev.received else None,
        "rate": round(dev.rate, 3),
        "latency_p50_ms": _ms(dev.latency.quantile(0.50)),
        "latency_p99_ms": _ms(dev.latency.quantile(0.99)),
        "agent_overflow": dev.agent_overflow,
        "agent_reconnects": dev.agent_reconnects,
        "agent_skipped_rows": dev.agent_skipped,
    }


def build_summary(acc: Accounting, elapsed: float) -> dict[str, Any]:
    devices = [device_record(d) for d in acc.snapshot()]
    totals = {
        "devices": sum(1 for d in devices if d["received"]),
        "received": acc.received,
        "valid": acc.valid,
        "invalid": acc.invalid_total,
        "gaps": sum(d["gaps"] for d in devices),
        "duplicates": sum(d["duplicates"] for d in devices),
        "resets": sum(d["resets"] for d in devices),
        "agent_overflow": sum(d["agent_overflow"] or 0 for d in devices),
        "agent_reconnects": sum(d["agent_reconnects"] or 0 for d in devices),
        "status_reconnects": sum(d["status_reconnects"] for d in devices),
        "online": sum(1 for d in devices if d["status"] == "online"),
        "offline": sum(1 for d in devices if d["status"] == "offline"),
        "latency_p50_ms": _ms(acc.latency.quantile(0.50)),
        "latency_p99_ms": _ms(acc.latency.quantile(0.99)),
        "elapsed_s": round(elapsed, 3),
        "rate": round(acc.received / elapsed, 1) if elapsed > 0 else 0.0,
    }
    span = None
    if acc.first_message is not None and acc.last_message is not None:
        span = acc.last_message - acc.first_message
    totals["message_span_s"] = None if span is None else round(span, 3)
    return {
        "totals": totals,
        "invalid_by_reason": {k: v for k, v in acc.invalid.items() if v},
        "bad_status": acc.bad_status,
        "devices": devices,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def table_rows(summary: dict[str, Any]) -> list[list[str]]:
    rows = []
    for d in summary["devices"]:
        rows.append(
            [
                d["device_id"],
                d["name"] or "-",
                d["status"] or "-",
                _cell(d["received"]),
                _cell(d["valid"]),
                _cell(d["invalid"]),
                _cell(d["gaps"]),
                _cell(d["duplicates"]),
                _cell(d["resets"]),
                _cell(d["agent_overflow"]),
                _cell(d["agent_reconnects"]),
                _cell(d["rate"]),
                _cell(d["latency_p50_ms"]),
                _cell(d["latency_p99_ms"]),
            ]
        )
    return rows


def totals_line(summary: dict[str, Any]) -> str:
    t = summary["totals"]
    line = (
        f"TOTAL devices={t['devices']} received={t['received']} valid={t['valid']}"
        f" invalid={t['invalid']} gaps={t['gaps']} duplicates={t['duplicates']}"
        f" resets={t['resets']}"
        f" overflow={t['agent_overflow']} reconnects={t['agent_reconnects']}"
        f" online={t['online']} offline={t['offline']}"
        f" p50={_cell(t['latency_p50_ms'])}ms p99={_cell(t['latency_p99_ms'])}ms"
        f" elapsed={t['elapsed_s']:.1f}s"
    )
    reasons = summary["invalid_by_reason"]
    if reasons:
        line += " invalid_by_reason=" + ",".join(f"{k}:{v}" for k, v in sorted(reasons.items()))
    return line


def render_plain(summary: dict[str, Any]) -> str:
    rows = [list(COLUMNS), *table_rows(summary)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append(totals_line(summary))
    return "\n".join(lines)


def rich_table(summary: dict[str, Any]) -> Any:
    from rich.table import Table  # imported lazily: only for terminals

    table = Table(title="edge fleet", caption=totals_line(summary), expand=False)
    for i, name in enumerate(COLUMNS):
        table.add_column(name, justify="left" if i < 3 else "right", no_wrap=True)
    for row in table_rows(summary):
        style = None
        if row[2] == "offline":
            style = "red"
        elif row[6] != "0" or row[5] != "0" or row[8] != "0":  # gaps, invalid, resets
            style = "yellow"
        table.add_row(*row, style=style)
    return table


def print_summary(summary: dict[str, Any], stream: TextIO) -> None:
    """A rich table on a terminal, plain aligned text otherwise (Ansible captures stdout)."""
    if stream.isatty():
        from rich.console import Console

        Console(file=stream).print(rich_table(summary))
    else:
        stream.write(render_plain(summary) + "\n")
        stream.flush()
