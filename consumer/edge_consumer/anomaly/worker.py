"""Where the detectors run: in the consumer's own thread (InlineDetector: tests, offline use)
or in a child process (DetectorProcess: the monitor service), so that detection does not take
CPU from ingestion. The detectors cost about as much per reading as validating and accounting
for it; in a process of their own they use another core, and the MQTT thread pays only for
queueing the reading's raw payload (bytes pickle at memcpy speed); the child parses it again.

Both take readings with submit() (the MQTT thread) and return findings from pump() (the main
thread, about ten times a second). DetectorProcess sends what was submitted as one batch per
pump, with one batch in flight at a time; while the child is behind, at most `max_pending`
readings wait and the rest skip detection (counted in `skipped`), so memory stays bounded under
any flood.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import signal
from collections import deque
from multiprocessing.connection import Connection
from typing import Any, Optional

from ..validation import Telemetry
from .engine import AnomalyEngine, EngineConfig
from .record import Anomaly

MAX_PENDING = 20_000  # readings waiting for the child (a payload is about 400 bytes: ~8 MB)

log = logging.getLogger("edge_consumer.anomaly")


class InlineDetector:
    """The engine on the caller's thread: findings of a reading come back at the next pump()."""

    def __init__(self, engine: AnomalyEngine) -> None:
        self.engine = engine
        self.skipped = 0
        self._found: list[Anomaly] = []

    def submit(self, t: Telemetry, payload: bytes) -> None:
        self._found += self.engine.observe(t.device_id, t.seq, t.ts, t.data, epoch=t.epoch)

    def pump(self, now: Optional[float]) -> list[Anomaly]:
        """Findings since the last pump; with `now`, also the devices silent by then."""
        found, self._found = self._found, []
        if now is not None:
            found += self.engine.tick(now)
        return found

    def close(self) -> None:
        pass


def _serve(conn: Connection, parent_end: Connection, config: Optional[EngineConfig]) -> None:
    """The child: observe each batch, answer with its findings. The parent alone handles
    SIGINT and SIGTERM (systemd signals the whole unit): it drains, then closes the pipe. The
    child closes its copy of the parent's end, so that the parent's death, even by SIGKILL,
    reaches it as end of file and it exits too."""
    parent_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    engine = AnomalyEngine(config)
    observe = engine.observe
    while True:
        try:
            message = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if message is None:
            return
        payloads, now = message
        found: list[Anomaly] = []
        for payload in payloads:  # validated by the parent: the fields are there and sane
            try:
                m = json.loads(payload)
                found += observe(
                    m["device_id"], m["seq"], float(m["ts"]), m["data"], m.get("epoch")
                )
            except Exception:  # a bug for one reading must not stop detection for all
                log.exception("anomaly detectors failed on a reading; it is skipped")
        if now is not None:
            found += engine.tick(now)
        conn.send([tuple(a) for a in found])


class DetectorProcess:
    """The engine in a forked child. Create it before the process starts any thread: a fork
    copies only the calling thread, and a lock another thread held would stay locked."""

    def __init__(
        self, config: Optional[EngineConfig] = None, max_pending: int = MAX_PENDING
    ) -> None:
        context = multiprocessing.get_context("fork")
        self._conn, child = context.Pipe()
        self._proc = context.Process(
            target=_serve, args=(child, self._conn, config), name="edge-anomaly", daemon=True
        )
        self._proc.start()
        child.close()
        self.max_pending = max_pending
        self.skipped = 0  # readings not judged because the child was behind
        self._pending: deque[bytes] = deque()
        self._in_flight = False

    def submit(self, t: Telemetry, payload: bytes) -> None:
        """A valid reading (t, as validation returned it, from this payload)."""
        pending = self._pending
        if len(pending) >= self.max_pending:
            self.skipped += 1
            return
        pending.append(payload)

    def pump(self, now: Optional[float]) -> list[Anomaly]:
        """Findings of the batch the child finished, if any; then the next batch goes out."""
        found: list[Anomaly] = []
        if self._in_flight and self._conn.poll():
            found = [Anomaly(*a) for a in self._receive()]
            self._in_flight = False
        if not self._in_flight and (self._pending or now is not None):
            pending = self._pending
            batch = [pending.popleft() for _ in range(len(pending))]  # the MQTT thread appends
            self._send((batch, now))
            self._in_flight = True
        return found

    def _receive(self) -> Any:
        try:
            return self._conn.recv()
        except (EOFError, OSError) as e:
            raise RuntimeError(f"the anomaly detector process died: {e}") from None

    def _send(self, message: Any) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, OSError) as e:
            code = self._proc.exitcode
            raise RuntimeError(f"the anomaly detector process died (exit {code}): {e}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()
