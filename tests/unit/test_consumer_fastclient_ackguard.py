"""Ack after accounting: no PUBACK is on the wire while its message's callback runs.

Checked for stock paho (the reference), FastClient with on_message, and FastClient with
on_fast_message (how the consumer uses it). A callback that raises leaves its message
unacknowledged in all three; the messages handled before it are acknowledged.

What stock paho does when on_message raises (suppress_exceptions False, the default): the
exception leaves loop_read (with loop_start/loop_forever it ends the network thread), no
PUBACK is sent for that message, and the packet stays in paho's `_in_packet`, so a later
loop_read hands the same message to on_message again (and acknowledges it if the callback
then returns). FastClient has consumed the packet: it is never redelivered on that
connection and never acknowledged, so the broker redelivers it after a reconnect. With
suppress_exceptions True, paho logs the error and acknowledges the message anyway; so does
FastClient for on_message, while an exception from on_fast_message (not a paho callback)
always propagates and leaves the message unacknowledged.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Optional

import paho.mqtt.client as mqtt
import pytest
from edge_consumer.fastclient import SUPPORTED, FastClient

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="paho internals differ: stock client used")

PUBACK = 0x40
MIDS = list(range(1, 31))
WITH_PROPS = {5, 20}  # these go through paho's own code in FastClient too


class FakeSock:
    def __init__(self, data: bytes) -> None:
        self.inbox = bytearray(data)
        self.sent = bytearray()

    def recv(self, bufsize: int) -> bytes:
        if not self.inbox:
            raise BlockingIOError
        out = bytes(self.inbox[:bufsize])
        del self.inbox[:bufsize]
        return out

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def close(self) -> None:
        pass

    def acked(self) -> list[int]:
        out = []
        for i in range(0, len(self.sent), 4):
            header, length, mid = struct.unpack("!BBH", self.sent[i : i + 4])
            assert (header, length) == (PUBACK, 2)
            out.append(mid)
        return out


def publish(topic: bytes, payload: bytes, mid: int, props: bytes = b"\x00") -> bytes:
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + props + payload
    assert len(body) < 128
    return bytes([0x32, len(body)]) + body


def stream() -> bytes:
    # PINGRESP first: the first packet of a read goes through paho's _packet_read, the rest
    # of the 64 KiB batch through FastClient's decoder.
    data = b"\xd0\x00"
    for mid in MIDS:
        props = b"\x02\x01\x01" if mid in WITH_PROPS else b"\x00"  # payload format: paho path
        data += publish(b"iot/telemetry/d", str(mid).encode(), mid, props)
    return data


# stock paho; FastClient with on_message; FastClient with on_fast_message (as the consumer)
KINDS = ["stock", "fast", "fast_cb"]


def make(
    kind: str, callback: Callable[[int], None], suppress: bool = False
) -> tuple[mqtt.Client, FakeSock]:
    factory = mqtt.Client if kind == "stock" else FastClient
    client = factory(mqtt.CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5)
    client.suppress_exceptions = suppress
    sock = FakeSock(stream())
    client._sock = sock  # type: ignore[assignment]  # as if connected
    client.on_message = lambda _c, _u, msg: callback(int(msg.payload))
    if kind == "fast_cb":
        assert isinstance(client, FastClient)
        client.on_fast_message = lambda _t, payload, _r: callback(int(payload))
    return client, sock


def drain(client: mqtt.Client, sock: FakeSock) -> Optional[BaseException]:
    """loop_read until all is read; returns the first exception a callback raised."""
    raised: Optional[BaseException] = None
    for _ in range(200):
        try:
            assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
        except RuntimeError as exc:
            raised = raised or exc
            continue
        if not sock.inbox:
            client.loop_read()
            return raised
    raise AssertionError("no progress")


@pytest.mark.parametrize("kind", KINDS)
def test_no_puback_while_the_callback_runs(kind: str) -> None:
    seen: list[int] = []
    sock_ref: list[FakeSock] = []

    def callback(mid: int) -> None:
        acked = sock_ref[0].acked()
        assert mid not in acked, f"PUBACK {mid} on the wire during its callback"
        assert set(acked) <= set(seen), "PUBACK for a message not yet handed over"
        seen.append(mid)

    client, sock = make(kind, callback)
    sock_ref.append(sock)
    assert drain(client, sock) is None
    assert seen == MIDS
    assert sock.acked() == MIDS  # all of them, in PUBLISH order (MQTT-4.6.0-2)


@pytest.mark.parametrize("bad", [7, 20])  # decoded by FastClient / by paho's code
@pytest.mark.parametrize("kind", KINDS)
def test_a_callback_that_raises_leaves_its_message_unacked(kind: str, bad: int) -> None:
    state: dict[str, Any] = {}

    def callback(mid: int) -> None:
        if mid == bad and "acked_at_raise" not in state:
            state["acked_at_raise"] = state["sock"].acked()
            raise RuntimeError("accounting failed")

    client, sock = make(kind, callback)
    state["sock"] = sock
    with pytest.raises(RuntimeError):
        while sock.inbox:
            client.loop_read()
    # Up to the failure: the earlier messages are acknowledged, the failed one is not.
    assert sock.acked() == [m for m in MIDS if m < bad]
    assert bad not in state["acked_at_raise"]
    drain(client, sock)
    if kind == "stock":
        # paho kept the packet in _in_packet and handed it over again: now acknowledged.
        assert sock.acked() == MIDS
    else:
        assert sock.acked() == [m for m in MIDS if m != bad]


@pytest.mark.parametrize("kind", KINDS)
def test_suppress_exceptions(kind: str) -> None:
    def callback(mid: int) -> None:
        if mid == 7:
            raise RuntimeError("accounting failed")

    client, sock = make(kind, callback, suppress=True)
    raised = drain(client, sock)
    if kind == "fast_cb":  # on_fast_message is not a paho callback: it always propagates
        assert raised is not None
        assert sock.acked() == [m for m in MIDS if m != 7]
    else:  # paho logs the error and acknowledges the message
        assert raised is None
        assert sock.acked() == MIDS
