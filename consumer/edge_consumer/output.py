"""Per-message output: a human log line (pretty), JSON lines, or nothing.

Plain string formatting and one write per message: rich stays out of the hot path.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Optional, TextIO, Union

from .validation import Telemetry

Emitter = Callable[[Optional[str], bytes, Union[Telemetry, str], float], None]
StatusEmitter = Callable[[str, str, bool, float], None]


def _clock(now: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


def pretty_line(
    topic: Optional[str], payload: bytes, result: Union[Telemetry, str], now: float
) -> str:
    if isinstance(result, str):
        return f"{_clock(now)} INVALID {result:<13} {topic!s} ({len(payload)} bytes)"
    d = result.data
    latency_ms = (now - result.ts) * 1000.0
    return (
        f"{_clock(now)} {result.device_name} [{result.device_id}] seq={result.seq}"
        f" temp={d['temp']:.1f}°C hum={d['humidity']:.1f}%"
        f" co={d['co']:.4f} lpg={d['lpg']:.4f} smoke={d['smoke']:.4f}"
        f" light={'on' if d['light'] else 'off'} motion={'yes' if d['motion'] else 'no'}"
        f" latency={latency_ms:.0f}ms"
    )


def json_line(
    topic: Optional[str], payload: bytes, result: Union[Telemetry, str], now: float
) -> str:
    if isinstance(result, str):
        record = {
            "type": "invalid",
            "received": now,
            "topic": topic,
            "reason": result,
            "bytes": len(payload),
        }
    else:
        record = {
            "type": "telemetry",
            "received": now,
            "topic": topic,
            "latency": now - result.ts,
            "message": result.message,
        }
    return json.dumps(record, separators=(",", ":"))


def status_pretty(device_id: str, status: str, retained: bool, now: float) -> str:
    return f"{_clock(now)} STATUS  {device_id} {status}{' (retained)' if retained else ''}"


def status_json(device_id: str, status: str, retained: bool, now: float) -> str:
    record = {
        "type": "status",
        "received": now,
        "device_id": device_id,
        "status": status,
        "retained": retained,
    }
    return json.dumps(record, separators=(",", ":"))


def make_emitters(fmt: str, stream: TextIO) -> tuple[Optional[Emitter], Optional[StatusEmitter]]:
    """Callables writing one line per message in `fmt`, or (None, None) for 'none'."""
    if fmt == "none":
        return None, None
    line = pretty_line if fmt == "pretty" else json_line
    status = status_pretty if fmt == "pretty" else status_json
    write = stream.write

    def emit(
        topic: Optional[str], payload: bytes, result: Union[Telemetry, str], now: float
    ) -> None:
        write(line(topic, payload, result, now) + "\n")

    def emit_status(device_id: str, state: str, retained: bool, now: float) -> None:
        write(status(device_id, state, retained, now) + "\n")

    return emit, emit_status
