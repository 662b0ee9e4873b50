"""MQTT side of the agent: persistent MQTTv5 session, status will, backoff, ack tracking.

paho runs in the caller's thread, never in a background thread, so callbacks and the agent loop
cannot race: no locks anywhere. The agent does the waiting itself (loop()), with paho's public
external-loop calls, so that it sleeps until the next due event and a stop request wakes it.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable, Optional

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .config import AgentConfig
from .protocol import STATUS_OFFLINE, STATUS_ONLINE
from .wake import Waker

log = logging.getLogger("edge_agent.mqtt")

SESSION_EXPIRY = 3600  # s: the broker keeps our session (and QoS1 state) across restarts
# A dead link (cable pulled, Wi-Fi gone) shows no error; paho finds it after at most two
# keepalive periods without traffic from the broker.
KEEPALIVE = 15
BACKOFF_BASE = 1.0
# Caps the wait after an outage: the fleet is back within ~10 s of the broker, and full jitter
# still spreads a 200-device reconnect over that window.
BACKOFF_CAP = 10.0
WINDOW = 20  # un-acked readings handed to paho at most (mosquitto's receive maximum is 20)
# How soon to look again if paho's keepalive times cannot be read (see _keepalive_due): a ping
# at most KEEPALIVE/3 late still reaches the broker before its 1.5 x KEEPALIVE limit.
KEEPALIVE_POLL = KEEPALIVE / 3


def backoff_delay(failures: int, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**failures))."""
    return rng(0.0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(failures, 16)))


def _time(value: object) -> Optional[float]:
    """value if it is a number (paho's private clock readings), else None."""
    return value if isinstance(value, (int, float)) else None


class Publisher:
    def __init__(self, config: AgentConfig, on_ack: Callable[[int], None], waker: Waker) -> None:
        self.config = config
        self.on_ack = on_ack
        self.waker = waker
        self.connected = False
        self.reconnects = 0  # successful connects after the first one, this process
        self.window = WINDOW
        self._connects = 0
        self._failures = 0
        self._next_attempt = 0.0
        self._inflight: dict[int, int] = {}  # paho mid -> seq
        self._status_mids: set[int] = set()
        self._closing = False
        self._misc_at = 0.0  # when loop_misc() last ran

        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5,
        )
        client.max_inflight_messages_set(WINDOW + 2)  # room for the status message
        if config.username:
            client.username_pw_set(config.username, config.password)
        if config.tls_ca:
            # tls_set keeps CERT_REQUIRED and hostname checking (tls_insecure stays False).
            client.tls_set(ca_certs=config.tls_ca, certfile=config.tls_cert, keyfile=config.tls_key)
        client.will_set(config.status_topic, STATUS_OFFLINE, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client

    # -- connection -------------------------------------------------------------------

    def maintain(self) -> None:
        """Start a connection attempt if we are down and the backoff delay has passed."""
        if self.connected or self.client.socket() is not None:
            return
        now = time.monotonic()
        if now < self._next_attempt:
            return
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY
        try:
            self.client.connect(
                self.config.broker,
                self.config.port,
                keepalive=KEEPALIVE,
                clean_start=False,
                properties=props,
            )
        except (OSError, ValueError) as e:  # refused, DNS, timeout, TLS errors
            self._schedule_retry(f"cannot connect to {self.config.broker}:{self.config.port}: {e}")

    def _schedule_retry(self, reason: str) -> None:
        delay = backoff_delay(self._failures)
        self._failures += 1
        self._next_attempt = time.monotonic() + delay
        log.warning("%s; retrying in %.1f s", reason, delay)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            log.error("broker refused the connection: %s", reason)
            return  # paho drops the socket; _on_disconnect schedules the retry
        self.connected = True
        self._failures = 0
        if self._connects:
            self.reconnects += 1
        self._connects += 1
        receive_max = getattr(props, "ReceiveMaximum", None)
        if receive_max:
            self.window = max(1, min(WINDOW, receive_max - 1))
        log.info(
            "connected to %s:%d (session present: %s)",
            self.config.broker,
            self.config.port,
            flags.session_present,
        )
        self._publish_status(STATUS_ONLINE)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected = False
        if not self._closing:
            self._schedule_retry(f"disconnected from broker ({reason})")

    # -- publishing -------------------------------------------------------------------

    def can_publish(self) -> bool:
        return self.connected and len(self._inflight) < self.window

    def publish(self, seq: int, payload: bytes) -> None:
        info = self.client.publish(
            self.config.telemetry_topic, payload, qos=self.config.qos, retain=False
        )
        if self.config.qos == 0:
            # At most once: handed to paho is done. (paho may even report QoS 0 as published
            # inside publish(), before we could know its mid.)
            self.on_ack(seq)
            return
        # QoS 1/2: paho keeps the message, and resends it after reconnects, until it is acked.
        self._inflight[info.mid] = seq

    def _publish_status(self, status: str) -> int:
        info = self.client.publish(self.config.status_topic, status, qos=1, retain=True)
        self._status_mids.add(info.mid)
        return info.mid

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        if mid in self._status_mids:
            self._status_mids.discard(mid)
            return
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return
        if reason.is_failure:
            # The broker refused it (e.g. ACL); resending would be refused forever.
            log.warning("broker rejected seq %d: %s", seq, reason)
        self.on_ack(seq)

    def loop(self, timeout: float) -> None:
        """Wait up to `timeout` s for the socket or a wake-up, then run paho's network I/O and
        its keepalive check (what client.loop() does, but a stop request can wake this)."""
        client = self.client
        sock = client.socket()
        if sock is None:
            self.waker.wait(timeout)
            return
        # Bytes that TLS has already decrypted are invisible to select() (paho checks too).
        pending = getattr(sock, "pending", None)
        buffered = pending is not None and pending() > 0
        readable, writable = self.waker.wait(
            0.0 if buffered else timeout, (sock,), (sock,) if client.want_write() else ()
        )
        if readable or buffered:
            client.loop_read()
        if writable and client.socket() is sock:
            client.loop_write()
        if client.socket() is not None:
            self._misc_at = time.monotonic()
            client.loop_misc()

    def next_event(self) -> float:
        """Monotonic time by which loop() must run again (it also returns on any packet)."""
        if self.client.socket() is None:
            return self._next_attempt  # maintain() connects then
        return self._keepalive_due()

    def _keepalive_due(self) -> float:
        """When paho's loop_misc() must next run: it pings once the last packet out or in is a
        keepalive old, and drops the link a keepalive after an unanswered ping (or CONNECT)."""
        # PRIVATE paho state, read only: there is no public accessor for these times. Names as
        # of paho 2.0-2.2 (_last_bytes_received was _last_msg_in before 2.2). paho's clock is
        # time.monotonic, like ours.
        c = self.client
        out = _time(getattr(c, "_last_msg_out", None))
        got = _time(getattr(c, "_last_bytes_received", getattr(c, "_last_msg_in", None)))
        ping = _time(getattr(c, "_ping_t", None))  # 0: no ping outstanding
        if out is None or got is None or ping is None:
            return time.monotonic() + KEEPALIVE_POLL
        due = min(out, got, ping or got) + KEEPALIVE
        # loop_misc() ran after `due` and did nothing: never spin on a paho we misread.
        return due if due > self._misc_at else time.monotonic() + KEEPALIVE_POLL

    # -- shutdown ---------------------------------------------------------------------

    def close(self, flush_timeout: float) -> None:
        """Wait up to flush_timeout for in-flight acks, publish offline, disconnect."""
        self._wait_while(lambda: bool(self._inflight), flush_timeout)
        if self._inflight:
            log.warning(
                "%d readings still un-acked at shutdown; resent after restart", len(self._inflight)
            )
        if self.connected:
            mid = self._publish_status(STATUS_OFFLINE)
            self._wait_while(lambda: mid in self._status_mids, 1.0)
            self._closing = True
            self.client.disconnect()  # written at once unless the socket is full
            if self.client.socket() is not None and self.client.want_write():
                self.loop(0.1)
        self.connected = False

    def _wait_while(self, busy: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while busy() and self.connected:
            now = time.monotonic()
            if now >= deadline:
                return
            self.loop(min(deadline, self.next_event()) - now)
