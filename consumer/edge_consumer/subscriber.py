"""MQTT side of the consumer: one MQTTv5 client, QoS 1 subscriptions, a lean on_message.

paho runs its network loop in its own thread (loop_start); every callback, and so all
accounting, happens on that thread. The main thread only reads snapshots.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, cast

import paho.mqtt.client as mqtt
from edge_agent.protocol import status_topic, telemetry_topic
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .accounting import Accounting
from .config import ConsumerConfig
from .fastclient import FastClient, make_client
from .ingest import Ingest
from .monitor import SYS_PREFIX, SYS_TOPIC
from .output import Emitter, StatusEmitter

log = logging.getLogger("edge_consumer.mqtt")

SESSION_EXPIRY = 3600  # s: with --persistent the broker queues QoS1 telemetry while we are away
KEEPALIVE = 30
# With a store, messages stay unacknowledged until their batch commits: the broker must let
# several batches be in flight (MQTT 5 Receive Maximum), or every batch would be a few rows.
RECEIVE_MAXIMUM = 4000
# CONNACK reasons that retrying cannot fix: give up with exit 1 instead of looping forever.
FATAL_CONNACK = {
    "Bad user name or password",
    "Not authorized",
    "Client identifier not valid",
    "Unsupported protocol version",
    "Banned",
}


class Subscriber:
    def __init__(
        self,
        config: ConsumerConfig,
        acc: Accounting,
        emit: Optional[Emitter] = None,
        emit_status: Optional[StatusEmitter] = None,
        on_sys: Optional[Callable[[str, bytes], None]] = None,
        sys_topic: str = SYS_TOPIC,
        ingest: Optional[Ingest] = None,
    ) -> None:
        """on_sys: called with broker $SYS messages, and subscribes to `sys_topic` for them.
        ingest: gets every valid reading; when it defers acks (a store), it acknowledges
        every QoS 1 message."""
        self.config = config
        self.ingest = ingest
        self.defer = ingest is not None and ingest.defers_acks
        self.generation = 0  # the stock client's connection count, for its deferred acks
        self._ack_lock = threading.Lock()
        self.on_sys = on_sys
        self.sys_topic = sys_topic
        self.acc = acc
        self.connected = threading.Event()
        self.fatal: Optional[str] = None  # set when the broker refuses us for good
        self.output_closed = False  # stdout went away (e.g. `| head`): stop quietly
        self.connects = 0
        self.wake = threading.Event()  # set on fatal errors so the main loop reacts at once

        client = make_client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5,
        )
        if self.defer:
            if isinstance(client, FastClient):
                client.defer_acks()
            else:
                client.manual_ack_set(True)
        if config.username:
            client.username_pw_set(config.username, config.password)
        if config.tls_ca:
            client.tls_set(ca_certs=config.tls_ca, certfile=config.tls_cert, keyfile=config.tls_key)
        client.reconnect_delay_set(1, 10)  # back within ~10 s of the broker, like the agents
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        self.client = client
        client.on_message = self._make_on_message(emit, emit_status)

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self.config.persistent:
            props.SessionExpiryInterval = SESSION_EXPIRY
        if self.defer:
            props.ReceiveMaximum = RECEIVE_MAXIMUM
        # connect_async + loop_start: paho retries the first connection too, so the consumer
        # may start before the broker does.
        self.client.connect_async(
            self.config.broker,
            self.config.port,
            keepalive=KEEPALIVE,
            clean_start=not self.config.persistent,
            properties=props,
        )
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # -- callbacks (paho's network thread) ------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            text = str(reason)
            log.warning("broker refused the connection: %s", text)
            if text in FATAL_CONNACK:
                self.fatal = f"broker refused the connection: {text}"
                self.wake.set()
            return
        self.connects += 1
        log.info(
            "connected to %s:%d (session present: %s)",
            self.config.broker,
            self.config.port,
            getattr(flags, "session_present", False),
        )
        topics = [
            (telemetry_topic("+", self.config.topic_prefix), 1),
            (status_topic("+", self.config.status_prefix), 1),
        ]
        if self.on_sys is not None:
            topics.append((self.sys_topic, 0))  # QoS 0: the broker re-sends them anyway
        client.subscribe(topics)
        self.connected.set()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        refused = [str(c) for c in codes if c.is_failure]
        if refused:  # e.g. an ACL: we would wait for telemetry that can never arrive
            log.error("broker refused a subscription: %s", ", ".join(refused))

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        log.warning(
            "cannot reach %s:%d; retrying with backoff", self.config.broker, self.config.port
        )

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        with self._ack_lock:  # before paho's reconnect() drops its queued packets
            self.generation += 1
        if not reason.is_failure:  # our own disconnect() at shutdown
            return
        log.warning("disconnected from the broker: %s; paho reconnects with backoff", reason)

    def _make_on_message(
        self, emit: Optional[Emitter], emit_status: Optional[StatusEmitter]
    ) -> Any:
        # A closure with everything bound to locals: this runs once per message, at
        # tens of thousands per second, so no attribute chains or logging here.
        handle = self.acc.handle
        handle_status = self.acc.handle_status
        status_prefix = self.config.status_prefix + "/"
        on_sys = self.on_sys
        clock = time.time
        ingest = self.ingest
        defer = self.defer
        client = self.client
        ack_lock = self._ack_lock
        sinks: list[Any] = [emit, emit_status]  # cleared when the output stream fails

        def output_failed() -> None:
            # An exception escaping a callback would kill paho's thread: stop output instead.
            sinks[0] = sinks[1] = None
            self.output_closed = True
            self.wake.set()

        def process(topic: Optional[str], payload: bytes, retained: bool, ack: Any) -> None:
            # ack: None, or a callable that acknowledges this message (deferred acks only);
            # ack[0] is cleared once something has taken charge of it.
            now = clock()
            if topic is not None and topic.startswith(status_prefix):
                state = handle_status(topic, payload, now, retained)
                if state is not None and sinks[1] is not None:
                    try:
                        sinks[1](topic[len(status_prefix) :], state, retained, now)
                    except (OSError, ValueError):
                        output_failed()
                return
            if topic is not None and topic.startswith(SYS_PREFIX):
                # Also when on_sys is None: a persistent session may still hold an old $SYS
                # subscription, and broker stats are not invalid telemetry.
                if on_sys is not None:
                    on_sys(topic, payload)
                return
            result = handle(topic, payload, now)
            if sinks[0] is not None:
                try:
                    sinks[0](topic, payload, result, now)
                except (OSError, ValueError):
                    output_failed()
            if ingest is not None and type(result) is not str:
                taken, ack[0] = ack[0], None
                ingest.reading(result, taken, payload)  # type: ignore[arg-type]

        def safe_process(topic: Optional[str], payload: bytes, retained: bool, ack: Any) -> None:
            # Validation never raises by design; this guard (free unless it fires) keeps a
            # bug from killing paho's thread and silently stalling the consumer.
            try:
                process(topic, payload, retained, ack)
            except Exception:
                log.exception("failed to process a message on %r", topic)
            if ack[0] is not None:  # not stored: acknowledged in order behind the readings
                assert ingest is not None
                ingest.passthrough(ack[0])

        no_ack: list[Any] = [None]  # what process() gets without deferred acks (never set)

        def fast_ack() -> list[Any]:
            fast = cast(FastClient, client)
            mid = fast.current_mid
            if not mid:
                return [None]
            generation = fast.generation
            return [lambda: fast.ack_later(mid, generation)]

        def stock_ack(mid: int) -> list[Any]:
            generation = self.generation

            def ack() -> None:
                with ack_lock:  # _on_disconnect bumps the generation under this lock
                    if generation == self.generation:
                        client.ack(mid, 1)

            return [ack if mid else None]

        def on_fast_message(topic: bytes, payload: bytes, retained: bool) -> None:
            try:
                name: Optional[str] = topic.decode("utf-8")
            except UnicodeDecodeError:
                name = None
            safe_process(name, payload, retained, fast_ack() if defer else no_ack)

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                name: Optional[str] = msg.topic
            except UnicodeDecodeError:
                name = None
            if not defer:
                ack = no_ack
            elif isinstance(client, FastClient):  # a packet paho decoded: same generation
                generation, mid = client.generation, msg.mid if msg.qos else 0
                ack = [(lambda: client.ack_later(mid, generation)) if mid else None]
            else:
                ack = stock_ack(msg.mid if msg.qos else 0)
            payload = cast(bytes, msg.payload)  # never bytearray
            safe_process(name, payload, bool(msg.retain), ack)

        if isinstance(self.client, FastClient):
            self.client.on_fast_message = on_fast_message
        return on_message
