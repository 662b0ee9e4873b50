"""Fleet check: have enough devices (or exactly the expected IDs) sent enough valid telemetry?"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from .accounting import DeviceStats

LIST_LIMIT = 50  # device IDs named per line; a 1000-device failure stays readable


@dataclass(frozen=True)
class CheckResult:
    met: bool
    ready: int  # devices with at least min_messages valid messages
    wanted: int
    missing: tuple[str, ...] = ()  # expected IDs never heard from
    too_little: tuple[tuple[str, int, int], ...] = ()  # (id, valid, invalid) below min_messages
    unexpected: tuple[str, ...] = ()  # sent telemetry but not in --expect-ids

    def note_lines(self) -> list[str]:
        """What the check does not fail on but an operator should see, met or not."""
        if not self.unexpected:
            return []
        return [f"unexpected devices (not in --expect-ids): {_names(self.unexpected)}"]

    def failure_lines(self, min_messages: int) -> list[str]:
        """One-line reasons; the fleet_verify role greps them for 'missing'/'heard'."""
        lines = [
            f"fleet check failed: {self.ready} of {self.wanted} expected devices"
            f" sent >= {min_messages} valid messages"
        ]
        if self.missing:
            lines.append(f"missing (never heard): {_names(self.missing)}")
        elif self.wanted > self.ready + len(self.too_little):
            lines.append(f"missing: {self.wanted - self.ready - len(self.too_little)} devices")
        if self.too_little:
            items = [f"{d} ({v} valid, {i} invalid)" for d, v, i in self.too_little]
            lines.append(f"heard too little (< {min_messages} valid): {_names(items)}")
        return lines + self.note_lines()


def _names(items: Sequence[str]) -> str:
    text = ", ".join(items[:LIST_LIMIT])
    if len(items) > LIST_LIMIT:
        text += f", ... and {len(items) - LIST_LIMIT} more"
    return text


def evaluate(
    devices: Iterable[DeviceStats],
    min_messages: int,
    expect: Optional[int] = None,
    expect_ids: Optional[Sequence[str]] = None,
) -> CheckResult:
    heard = {d.device_id: d for d in devices if d.received}
    if expect_ids is not None:
        wanted = set(expect_ids)
        ready = [i for i in expect_ids if i in heard and heard[i].valid >= min_messages]
        missing = tuple(i for i in expect_ids if i not in heard)
        too_little = tuple(
            (i, heard[i].valid, heard[i].invalid_total)
            for i in expect_ids
            if i in heard and heard[i].valid < min_messages
        )
        unexpected = tuple(sorted(i for i in heard if i not in wanted))
        return CheckResult(
            met=len(ready) == len(expect_ids),
            ready=len(ready),
            wanted=len(expect_ids),
            missing=missing,
            too_little=too_little,
            unexpected=unexpected,
        )
    if expect is None:
        raise ValueError("evaluate() needs expect or expect_ids")
    ready_count = sum(1 for d in heard.values() if d.valid >= min_messages)
    too_little = tuple(
        sorted(
            (d.device_id, d.valid, d.invalid_total)
            for d in heard.values()
            if d.valid < min_messages
        )
    )
    return CheckResult(
        met=ready_count >= expect, ready=ready_count, wanted=expect, too_little=too_little
    )
