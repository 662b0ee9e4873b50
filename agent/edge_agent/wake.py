"""Sleep until a socket is ready, a deadline passes or a stop is requested."""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Sequence
from typing import Any

# Nothing the agent waits for is further away than this (keepalive 15 s, backoff cap 10 s);
# it only bounds a wait if a deadline is ever missing.
LONGEST_WAIT = 60.0


class Waker:
    """A self-pipe that is part of every wait, so that wake() ends the current or next wait.

    A stop flag alone would not do: when a signal handler returns, Python resumes the
    interrupted select() for the rest of its timeout (PEP 475), up to a keepalive period.
    """

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        return self._r.fileno()

    def wake(self) -> None:
        """Safe in a signal handler, and after close()."""
        # OSError: the buffer is full (a wake-up is pending anyway) or the waker is closed.
        with contextlib.suppress(OSError):
            self._w.send(b"\0")

    def wait(
        self, timeout: float, readers: Sequence[Any] = (), writers: Sequence[Any] = ()
    ) -> tuple[list[Any], list[Any]]:
        """Wait up to `timeout` s; returns the ready readers and writers (never the waker).

        A wake-up is consumed, so that later waits (the flush at shutdown) sleep again.
        """
        timeout = min(max(0.0, timeout), LONGEST_WAIT)
        ready, writable, _ = select.select([self, *readers], writers, [], timeout)
        if self in ready:
            ready.remove(self)
            with contextlib.suppress(BlockingIOError):  # drained
                while self._r.recv(64):
                    pass
        return ready, writable

    def close(self) -> None:
        self._r.close()
        self._w.close()
