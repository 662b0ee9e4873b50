"""A paho Client tuned for receiving floods of small QoS 0/1 PUBLISH packets.

Profiling stock paho 2.x at ~4-8k msg/s showed the time going to: one select() plus three
or four recv() syscalls per packet (it reads the fixed header byte by byte), an MQTTv5
Properties object and an MQTTMessage (with a Condition) built per PUBLISH, and one send()
per PUBACK. This subclass changes only the receive side:

* reads the socket 64 KiB at a time and parses every complete packet in the buffer;
* decodes property-less QoS 0/1 PUBLISH packets itself and hands (topic, payload, retain)
  to `on_fast_message` when set (else builds a normal MQTTMessage for on_message);
* everything else (CONNACK, SUBACK, QoS 2, PUBLISH with properties, partial packets)
  goes through paho's own code;
* sends the PUBACKs of a batch together, after the callback returned for each message,
  so QoS 1 still acknowledges only processed messages; they go out before paho handles
  another packet, so acknowledgements keep the order of their PUBLISHes (MQTT-4.6.0-2/3).

Deferred acknowledgement (`defer_acks()`, for the telemetry store): the callback learns the
packet id from `current_mid` and acknowledges later, from any thread, with
`ack_later(mid, generation)`. Such acks are collected and go out together from the network
thread. Each is bound to the connection it came on (`generation`): after a disconnect a
packet id may name another message, so a stale ack is dropped and the broker redelivers.

It overrides private paho methods, so it is used only when they look as expected
(paho-mqtt 2.x; the dependency is pinned <3); otherwise, or with EDGE_CONSUMER_STOCK_PAHO=1,
the stock Client is used.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from typing import Any, Callable, Optional

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTTMessage
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.exception import MalformedPacket

_HOOKS = (
    "_sock_recv",
    "_packet_read",
    "_packet_handle",
    "_handle_publish",
    "_handle_on_message",
    "_packet_queue",
    "_packet_write",
    "_loop_rc_handle",
    "_create_socket",
)
SUPPORTED = paho.mqtt.__version__.startswith("2.") and all(hasattr(mqtt.Client, h) for h in _HOOKS)
_PUBLISH = 0x30
_PUBACK = 0x40
_puback = struct.Struct("!BBH").pack
READ_SIZE = 65536
REFILLS_PER_LOOP = 16  # socket reads per loop_read, so PUBACKs and pings get their turn

FastCallback = Callable[[bytes, bytes, bool], None]  # topic, payload, retain


def _empty_in_packet() -> Any:  # paho's private _InPacket TypedDict
    return {
        "command": 0,
        "have_remaining": 0,
        "remaining_count": [],
        "remaining_mult": 1,
        "remaining_length": 0,
        "packet": bytearray(b""),
        "to_process": 0,
        "pos": 0,
    }


class FastClient(mqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_fast_message: Optional[FastCallback] = None
        self._rbuf = b""
        self._rpos = 0
        self._acks: list[int] = []
        self.current_mid = 0  # the packet id of the message being handled (0: QoS 0)
        self.generation = 0  # bumped when a connection closes: acks of an older one are void
        self._deferred: list[int] = []  # acks from ack_later(), sent by the network thread
        self._deferred_lock = threading.Lock()
        self._defer = False

    def defer_acks(self) -> None:
        """From now on QoS 1 messages are acknowledged only by ack_later() (before connect)."""
        self._defer = True
        self._manual_ack = True  # messages left to paho's own code are not acked by paho either

    def ack_later(self, mid: int, generation: int) -> bool:
        """Acknowledge message `mid` of connection `generation` (any thread); False, and
        nothing sent, when that connection is gone."""
        with self._deferred_lock:
            if generation != self.generation or self._sock is None:
                return False
            first = not self._deferred
            self._deferred.append(mid)
        if first and self._sockpairW is not None:  # wake select(): loop_write() sends them
            with contextlib.suppress(BlockingIOError):
                self._sockpairW.send(b"0")
        return True

    def _sock_close(self) -> None:
        with self._deferred_lock:
            self.generation += 1
            self._deferred.clear()
        super()._sock_close()

    def want_write(self) -> bool:
        return bool(self._deferred) or super().want_write()

    def loop_write(self) -> MQTTErrorCode:
        self._flush_acks()
        return super().loop_write()

    def _create_socket(self) -> Any:
        self._rbuf, self._rpos = b"", 0  # never parse stale bytes from a previous connection
        self._acks.clear()
        return super()._create_socket()

    def _sock_recv(self, bufsize: int) -> bytes:
        # paho's own _packet_read (used for partial packets) reads through the buffer too.
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            buf = super()._sock_recv(READ_SIZE)  # raises BlockingIOError when drained
            if not buf:
                return buf  # connection closed
            pos = 0
        end = pos + bufsize
        self._rbuf, self._rpos = buf, end
        return buf[pos:end]

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        if self._sock is None:
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        try:
            for _ in range(REFILLS_PER_LOOP):
                rc = self._drain()
                if rc:
                    return self._close(rc)
                if self._sock is None:
                    return MQTTErrorCode.MQTT_ERR_NO_CONN
                # Buffer empty or holding a partial packet: paho reads on (refilling it).
                rc = self._packet_read()
                if rc > 0:
                    return self._close(rc)
                if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                    break
            # Leave no complete packet buffered: select() would not wake up for it.
            rc = self._drain()
            if rc:
                return self._close(rc)
        finally:
            self._flush_acks()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _close(self, rc: MQTTErrorCode) -> MQTTErrorCode:
        # As stock paho has, acknowledge the messages handled before the error, then close.
        self._flush_acks()
        return self._loop_rc_handle(rc)

    def _packet_handle(self) -> MQTTErrorCode:
        # paho acknowledges (PUBACK/PUBREC/PUBCOMP) as it handles: our earlier ones go first.
        self._flush_acks()
        return super()._packet_handle()

    def _flush_acks(self) -> None:
        acks = self._acks
        if self._deferred:
            with self._deferred_lock:
                acks += self._deferred
                self._deferred.clear()
        if acks and self._sock is not None:
            packet = b"".join([_puback(_PUBACK, 2, m) for m in acks])
            # We are on the network thread: queue and write at once, rather than through
            # _packet_queue, which wakes select() via its socketpair (two more syscalls and
            # another loop pass per batch). A partial write stays queued: want_write() then
            # makes paho's loop finish it.
            self._out_packet.append(
                {
                    "command": _PUBACK,
                    "mid": 0,
                    "qos": 0,
                    "pos": 0,
                    "to_process": len(packet),
                    "packet": packet,
                    "info": None,
                }
            )
            self._packet_write()  # errors surface on the next read as a lost connection
        acks.clear()

    def _drain(self) -> MQTTErrorCode:
        """Handle every complete packet in the buffer (unless paho is mid-packet)."""
        if self._in_packet["command"]:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        buf, pos = self._rbuf, self._rpos
        n = len(buf)
        handled = False
        try:
            while pos + 1 < n:
                cmd = buf[pos]
                length, mult, i = 0, 1, pos + 1
                while True:
                    if i >= n:
                        return MQTTErrorCode.MQTT_ERR_SUCCESS  # header incomplete
                    byte = buf[i]
                    length += (byte & 127) * mult
                    mult <<= 7
                    i += 1
                    if not byte & 128:
                        break
                    if i - pos > 4:
                        return MQTTErrorCode.MQTT_ERR_PROTOCOL
                end = i + length
                if end > n:
                    return MQTTErrorCode.MQTT_ERR_SUCCESS  # body incomplete
                pos = self._rpos = end
                handled = True
                if (cmd & 0xF0) == _PUBLISH and self._fast_publish(cmd, buf, i, end):
                    continue
                packet = _empty_in_packet()
                packet.update(command=cmd, have_remaining=1, remaining_length=length)
                packet["packet"] = bytearray(buf[i:end])
                self._in_packet = packet
                try:
                    rc = self._packet_handle()
                except MalformedPacket:  # as paho's _packet_read: drop the connection
                    rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
                finally:
                    self._in_packet = _empty_in_packet()
                if rc or self._sock is None:
                    return rc
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        finally:
            if handled:
                with self._msgtime_mutex:
                    self._last_bytes_received = time.monotonic()

    def _fast_publish(self, cmd: int, buf: bytes, start: int, end: int) -> bool:
        """Decode a property-less QoS 0/1 MQTTv5 PUBLISH; False leaves it to paho."""
        qos = (cmd & 0x06) >> 1
        if qos > 1 or self._protocol != mqtt.MQTTv5 or (self._manual_ack and not self._defer):
            return False
        try:
            pos = start + 2 + ((buf[start] << 8) | buf[start + 1])
            topic = buf[start + 2 : pos]
            mid = 0
            if qos:
                mid = (buf[pos] << 8) | buf[pos + 1]
                pos += 2
            if pos >= end or buf[pos]:  # properties present (topic alias...) or malformed
                return False
        except IndexError:
            return False
        payload = buf[pos + 1 : end]
        retain = bool(cmd & 0x01)
        self.current_mid = mid
        callback = self.on_fast_message
        if callback is not None:
            with self._in_callback_mutex:
                callback(topic, payload, retain)
        else:
            message = MQTTMessage(mid=mid, topic=topic)
            message.qos, message.retain, message.dup = qos, retain, bool(cmd & 0x08)
            message.payload = payload
            message.timestamp = time.monotonic()
            self._handle_on_message(message)
        if qos and not self._defer:
            self._acks.append(mid)
        return True


def make_client(**kwargs: Any) -> mqtt.Client:
    # EDGE_CONSUMER_STOCK_PAHO=1 is the escape hatch should the fast path ever misbehave.
    if SUPPORTED and not os.environ.get("EDGE_CONSUMER_STOCK_PAHO"):
        return FastClient(**kwargs)
    return mqtt.Client(**kwargs)
