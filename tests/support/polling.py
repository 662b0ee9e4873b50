"""Waiting for a condition instead of sleeping for a fixed time."""

from __future__ import annotations

import time
from typing import Callable


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until it is truthy or `timeout` s pass; True if it became truthy.

    The predicate is evaluated one last time at the deadline, so a condition that came true
    during the final sleep still counts.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def await_condition(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Like wait_until, but fail the test naming `what` did not happen within `timeout` s."""
    if not wait_until(predicate, timeout, interval):
        raise AssertionError(f"{what}: not within {timeout:g} s")
