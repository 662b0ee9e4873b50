"""--live: a rich table of the fleet, redrawn about twice a second from the main thread."""

from __future__ import annotations

import time
from typing import Any, Callable

from .accounting import Accounting
from .summary import build_summary, rich_table

REFRESH_S = 0.5


class LiveView:
    def __init__(self, acc: Accounting, started: float) -> None:
        from rich.live import Live  # imported lazily: only when --live is used

        self.acc = acc
        self.started = started
        self._last = 0.0
        self._live = Live(self._render(), refresh_per_second=2, transient=False)

    def _render(self) -> Any:
        return rich_table(build_summary(self.acc, time.monotonic() - self.started))

    def __enter__(self) -> Callable[[], None]:
        self._live.__enter__()
        return self.tick

    def __exit__(self, *exc: object) -> None:
        self._live.update(self._render(), refresh=True)
        self._live.__exit__(None, None, None)

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._last >= REFRESH_S:
            self._last = now
            self._live.update(self._render())
