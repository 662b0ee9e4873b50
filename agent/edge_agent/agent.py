"""The agent loop: produce readings on schedule, queue them, publish them, track the watermark."""

from __future__ import annotations

import logging
import sys
import time
from collections import deque
from operator import attrgetter
from typing import TYPE_CHECKING, Callable, Optional, TextIO

from .config import AgentConfig, ConfigError
from .dataset import Slice
from .pacing import Pacer
from .protocol import DATA_FIELDS, telemetry
from .publisher import Publisher
from .state import State, load_state, new_epoch, save_state
from .wake import Waker

if TYPE_CHECKING:
    from .faults import FaultInjector

log = logging.getLogger("edge_agent")

FLUSH_TIMEOUT = 5.0  # s to wait for in-flight acks on SIGTERM
SAVE_EVERY_ACKS = 10
SAVE_EVERY_SECONDS = 1.0
OVERFLOW_LOG_EVERY = 10.0  # s: one WARNING per period, not one per dropped reading
HAND_OVER_MAX = 100  # readings handed to MQTT per loop pass
_data_values = attrgetter(*DATA_FIELDS)  # a Reading's payload `data`, in DATA_FIELDS order


class ReadingQueue:
    """Readings produced but not yet handed to MQTT, oldest first, bounded (drop oldest).

    Produced seqs are contiguous and rows advance with seq, so only the production time
    of each reading is stored; seq and row follow from the head.
    """

    def __init__(self, maxlen: int, rows: int, seq: int, row: int) -> None:
        self._times: deque[float] = deque()
        self.maxlen = maxlen
        self.rows = rows
        self.head_seq = seq
        self.head_row = row

    def __len__(self) -> int:
        return len(self._times)

    def push(self, ts: float) -> bool:
        """Append a reading; returns True if the oldest one was dropped to make room."""
        dropped = len(self._times) >= self.maxlen
        if dropped:
            self.pop()
        self._times.append(ts)
        return dropped

    def pop(self) -> tuple[int, int, float]:
        seq, row = self.head_seq, self.head_row
        ts = self._times.popleft()
        self.head_seq += 1
        self.head_row = (row + 1) % self.rows
        return seq, row, ts


class DryRunSink:
    """Stands in for Publisher in --dry-run: prints each payload and acks it at once."""

    reconnects = 0

    def __init__(self, out: TextIO, on_ack: Callable[[int], None], waker: Waker) -> None:
        self.out = out
        self.on_ack = on_ack
        self.waker = waker

    def maintain(self) -> None:
        pass

    def can_publish(self) -> bool:
        return True

    def publish(self, seq: int, payload: bytes) -> None:
        self.out.write(payload.decode() + "\n")
        self.out.flush()
        self.on_ack(seq)

    def loop(self, timeout: float) -> None:
        self.waker.wait(timeout)

    def next_event(self) -> float:
        return float("inf")

    def close(self, flush_timeout: float) -> None:
        pass


class Agent:
    def __init__(self, config: AgentConfig, readings: Slice, out: Optional[TextIO] = None) -> None:
        self.config = config
        self.readings = readings
        self.pacer = Pacer(config.interval, config.rate, config.replay_speed, readings)
        self.stopping = False
        state = State(epoch=new_epoch()) if config.dry_run else self._initial_state()
        self.overflow = state.overflow
        self.epoch = state.epoch
        rows = len(readings)
        if state.cursor >= rows:
            log.warning("saved cursor %d is past the slice (%d rows); wrapping", state.cursor, rows)
        self.next_seq, self.next_row = state.seq, state.cursor % rows
        self.queue = ReadingQueue(config.queue_size, rows, self.next_seq, self.next_row)
        self.inflight: dict[int, int] = {}  # seq -> row, handed to MQTT, not yet acked
        self.waker = Waker()  # request_stop() ends the sink's current wait
        self.sink: Publisher | DryRunSink = (
            DryRunSink(out or sys.stdout, self._on_ack, self.waker)
            if config.dry_run
            else Publisher(config, self._on_ack, self.waker)
        )
        self._acks_since_save = 0
        self._last_save = time.monotonic()  # of the last write (attempt)
        # What the state file holds (_initial_state wrote it): an unchanged state is not rewritten.
        self._saved: Optional[State] = None if config.dry_run else self._with_device(state)
        self._overflow_unlogged = 0
        self._overflow_logged_at = 0.0
        self.faults: Optional[FaultInjector] = None
        if config.faults is not None:  # imported only when enabled: the agent stays lean
            from .faults import FaultInjector

            self.faults = FaultInjector(config.faults, config.device_id)
            log.warning("injecting faults: %s", config.faults)

    def _initial_state(self) -> State:
        state = load_state(self.config.state_dir)
        if state.device_id not in (None, self.config.device_id):
            log.warning(
                "state in %s belongs to device %s, not %s; starting again at seq 0",
                self.config.state_dir,
                state.device_id,
                self.config.device_id,
            )
            state = State()
        if state.epoch is None:  # first start (or a state file from before epochs)
            state = state._replace(epoch=new_epoch())
        try:  # fail at startup, not at the first ack, if the directory is not writable
            save_state(self.config.state_dir, self._with_device(state))
        except OSError as e:
            raise ConfigError(
                "STATE_DIR", f"cannot write {self.config.state_dir}: {e.strerror or e}"
            ) from None
        return state

    def _with_device(self, state: State) -> State:
        return state._replace(device_id=self.config.device_id)

    # -- bookkeeping ------------------------------------------------------------------

    def _on_ack(self, seq: int) -> None:
        self.inflight.pop(seq, None)
        self._acks_since_save += 1

    def watermark(self) -> State:
        """Lowest seq not yet acked or dropped, with its row: where a restart resumes."""
        if self.inflight:
            seq = min(self.inflight)
            row = self.inflight[seq]
        elif len(self.queue):
            seq, row = self.queue.head_seq, self.queue.head_row
        else:
            seq, row = self.next_seq, self.next_row
        return State(seq, row, self.overflow, self.config.device_id, self.epoch)

    def save(self, force: bool = False) -> None:
        """Write the watermark if it changed: at once after SAVE_EVERY_ACKS acks, else at most
        once per SAVE_EVERY_SECONDS (save_due() says when the loop must be awake for it)."""
        if self.config.dry_run:
            return
        state = self.watermark()
        if state == self._saved and not force:
            return
        now = time.monotonic()
        if not (
            force
            or self._acks_since_save >= SAVE_EVERY_ACKS
            or now - self._last_save >= SAVE_EVERY_SECONDS
        ):
            return
        self._acks_since_save = 0
        self._last_save = now
        try:
            save_state(self.config.state_dir, state)
            self._saved = state
        except OSError as e:
            log.error("cannot save state in %s: %s", self.config.state_dir, e)

    def save_due(self) -> Optional[float]:
        """Monotonic time at which save() would write, or None if nothing changed."""
        if self.config.dry_run or self.watermark() == self._saved:
            return None
        return self._last_save + SAVE_EVERY_SECONDS

    def payload(self, seq: int, row: int, ts: float) -> bytes:
        r = self.readings[row]
        data = dict(zip(DATA_FIELDS, _data_values(r)))
        if self.faults is not None:
            data = self.faults.apply(seq, data)
        return telemetry(
            self.config.device_id,
            self.config.device_name,
            ts,
            seq,
            data,
            source={"device": r.device, "ts": r.ts},
            stats={
                "overflow": self.overflow,
                "reconnects": self.sink.reconnects,
                "skipped_rows": self.readings.skipped,
            },
            epoch=self.epoch,
        )

    # -- main loop --------------------------------------------------------------------

    def _produce(self) -> None:
        if self.queue.push(time.time()):
            self.overflow += 1
            self._overflow_unlogged += 1
        self.next_seq += 1
        self.next_row = (self.next_row + 1) % len(self.readings)
        now = time.monotonic()
        if self._overflow_unlogged and now - self._overflow_logged_at >= OVERFLOW_LOG_EVERY:
            log.warning(
                "queue full (%d readings): dropped the %d oldest (total dropped %d)",
                self.queue.maxlen,
                self._overflow_unlogged,
                self.overflow,
            )
            self._overflow_unlogged = 0
            self._overflow_logged_at = now

    def _hand_over(self) -> None:
        # Bounded per pass so a long backlog (or QoS 0, which has no window) cannot starve
        # paho's network I/O or pile up in its buffers.
        for _ in range(HAND_OVER_MAX):
            if not (len(self.queue) and self.sink.can_publish()):
                break
            seq, row, ts = self.queue.pop()
            self.inflight[seq] = row
            self.sink.publish(seq, self.payload(seq, row, ts))

    def run(self) -> int:
        count = self.config.max_readings
        produced = 0
        next_due = time.monotonic()
        while not self.stopping:
            now = time.monotonic()
            # Catch up after a blocking connect attempt rather than silently skipping readings.
            while (count is None or produced < count) and now >= next_due:
                row = self.next_row
                # A dropout slot produces nothing: seq and row wait for the sensor to return.
                if self.faults is None or not self.faults.silent(self.next_seq):
                    self._produce()
                    produced += 1
                next_due += self.pacer.gap_after(row)
            self.sink.maintain()
            self._hand_over()
            self.save()
            if count is not None and produced >= count and not self.queue and not self.inflight:
                log.info("published %d readings (--count); stopping", count)
                break
            more = count is None or produced < count
            self.sink.loop(self.wake_at(next_due if more else None) - time.monotonic())
        self.shutdown()
        return 0

    def wake_at(self, next_reading: Optional[float]) -> float:
        """The earliest due event: the next reading, the publisher's next connection attempt
        or keepalive check, the next state save. Acks and other packets end the wait early."""
        if self.queue and self.sink.can_publish():
            return 0.0  # a backlog longer than one pass hands over (HAND_OVER_MAX)
        due = self.sink.next_event()
        if next_reading is not None:
            due = min(due, next_reading)
        save = self.save_due()
        return due if save is None else min(due, save)

    def request_stop(self) -> None:
        """End run() promptly; safe in a signal handler."""
        self.stopping = True
        self.waker.wake()

    def shutdown(self) -> None:
        self.sink.close(FLUSH_TIMEOUT)
        self.waker.close()
        if self._overflow_unlogged:
            log.warning("dropped %d readings on queue overflow", self._overflow_unlogged)
        if self.config.dry_run:
            return
        self.save(force=True)
        wm = self.watermark()
        log.info("stopped; next start resumes at seq %d (row %d)", wm.seq, wm.cursor)
