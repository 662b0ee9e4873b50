"""Differential test: the same broker->client byte stream through stock paho and FastClient.

The stream is split at every offset (bytes[:k], then bytes[k:]) and at random multi-splits
with a fixed seed; both clients must deliver the same messages in the same order and write
back the same acknowledgement bytes (PUBACK/PUBREC/PUBCOMP) as stock paho fed the stream
whole.

How the stream is built: PUBLISH, PUBREL and PINGRESP come from paho's own encoders
(`Client._send_publish`, `_send_pubrel`, `_send_pingresp` of a throwaway client, captured at
`_packet_queue`); paho has no encoder for CONNACK and SUBACK (a client never sends them), so
those two are hand-written here, their MQTTv5 properties packed by paho's `Properties.pack`.

Note: paho 2.x does not map inbound topic aliases; a PUBLISH that uses an alias is delivered
with an empty topic and its TopicAlias property, by both clients alike.
"""

from __future__ import annotations

import random
import struct
from typing import Any, Callable, Optional

import paho.mqtt.client as mqtt
import pytest
from edge_consumer.fastclient import SUPPORTED, FastClient
from mqtt_bytes import varint
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="paho internals differ: stock client used")

V2 = mqtt.CallbackAPIVersion.VERSION2


class FakeSock:
    """The client's socket: recv serves what the broker delivered so far, send records."""

    def __init__(self) -> None:
        self.inbox = bytearray()
        self.sent = bytearray()
        self.closed = False

    def deliver(self, data: bytes) -> None:
        self.inbox += data

    def recv(self, bufsize: int) -> bytes:
        if self.closed:
            raise OSError("closed")
        if not self.inbox:
            raise BlockingIOError
        out = bytes(self.inbox[:bufsize])
        del self.inbox[:bufsize]
        return out

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def close(self) -> None:
        self.closed = True


# --- the stream ------------------------------------------------------------------------------


class Encoder:
    """paho's own packet encoders, captured instead of sent."""

    def __init__(self) -> None:
        self.client = mqtt.Client(V2, client_id="encoder", protocol=mqtt.MQTTv5)
        self.client._sock = FakeSock()  # type: ignore[assignment]  # _send_* need a socket
        self.out = bytearray()

        def capture(_command: int, packet: bytes, *_args: Any, **_kw: Any) -> Any:
            self.out += packet
            return mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS

        self.client._packet_queue = capture  # type: ignore[method-assign]

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        mid: int = 0,
        retain: bool = False,
        dup: bool = False,
        props: Optional[Properties] = None,
    ) -> Encoder:
        self.client._send_publish(mid, topic.encode(), payload, qos, retain, dup, None, props)
        return self

    def pubrel(self, mid: int) -> Encoder:
        self.client._send_pubrel(mid)
        return self

    def pingresp(self) -> Encoder:
        self.client._send_pingresp()
        return self

    def raw(self, data: bytes) -> Encoder:
        self.out += data
        return self

    def data(self) -> bytes:
        return bytes(self.out)


def connack(session_present: bool = False) -> bytes:  # hand-written
    props = Properties(PacketTypes.CONNACK)
    props.TopicAliasMaximum = 10
    props.ReceiveMaximum = 100
    body = bytes([int(session_present), 0]) + props.pack()
    return b"\x20" + varint(len(body)) + body


def suback(mid: int, codes: list[int]) -> bytes:  # hand-written
    props = Properties(PacketTypes.SUBACK)
    props.ReasonString = "ok"
    body = struct.pack("!H", mid) + props.pack() + bytes(codes)
    return b"\x90" + varint(len(body)) + body


def publish_props(**values: Any) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def build_stream(big: int = 300) -> bytes:
    user = publish_props(
        UserProperty=[("site", "lab"), ("k", "v")],
        ContentType="application/json",
        MessageExpiryInterval=60,
    )
    fmt = publish_props(PayloadFormatIndicator=1)
    return (
        Encoder()
        .raw(connack())
        .raw(suback(1, [1, 1]))
        .publish("iot/telemetry/d1", b'{"seq":1}')
        .publish("iot/telemetry/d1", b'{"seq":2}', qos=1, mid=10)
        .publish("iot/status/d1", b"online", qos=1, mid=11, retain=True)
        .publish("iot/telemetry/d2", b'{"seq":3}', qos=1, mid=12, props=user)
        .publish("iot/telemetry/d1", b'{"seq":4}', qos=1, mid=13)
        .publish("iot/telemetry/d3", b'{"seq":5}', qos=2, mid=14)
        .publish("iot/telemetry/d1", b'{"seq":2}', qos=1, mid=10, dup=True)
        .pubrel(14)
        .pingresp()
        .publish("iot/status/d2", b"retained", qos=0, retain=True)
        .publish("iot/status/d2", b"aliased", props=publish_props(TopicAlias=1))
        .publish("", b"via alias", props=publish_props(TopicAlias=1))
        .publish("iot/telemetry/d4", b"", qos=1, mid=15)
        .publish("iot/telemetry/d\u00e9", bytes(range(256)) * (big // 256 + 1), qos=1, mid=16)
        .publish("iot/telemetry/d5", b"x", qos=2, mid=17, dup=True, props=user)
        .publish("iot/telemetry/d5", b"fmt", qos=1, mid=18, props=fmt)
        .pubrel(17)
        .publish("iot/telemetry/d1", b'{"seq":6}', qos=1, mid=1, retain=True)
        .publish("iot/telemetry/d1", b'{"seq":7}', qos=0)
        .data()
    )


STREAM = build_stream()


# --- driving a client -------------------------------------------------------------------------


def _props(props: Optional[Properties]) -> dict[str, Any]:
    return {} if props is None else props.json()


class Run:
    def __init__(self, factory: Callable[..., mqtt.Client], fast_callback: bool = False) -> None:
        self.sock = FakeSock()
        self.client = client = factory(V2, client_id="t", protocol=mqtt.MQTTv5)
        client._sock = self.sock  # type: ignore[assignment]  # as if connected
        self.events: list[tuple[Any, ...]] = []
        self.rc: Optional[int] = None
        events = self.events

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            events.append(
                (
                    "msg",
                    msg._topic,
                    bytes(msg.payload),
                    msg.qos,
                    bool(msg.retain),
                    bool(msg.dup),
                    msg.mid,
                    _props(msg.properties),
                )
            )

        def on_connect(_c: Any, _u: Any, flags: Any, reason: Any, props: Any) -> None:
            events.append(("connack", flags.session_present, str(reason), _props(props)))

        def on_subscribe(_c: Any, _u: Any, mid: int, codes: Any, props: Any) -> None:
            events.append(("suback", mid, [int(c.value) for c in codes], _props(props)))

        client.on_message = on_message
        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        if fast_callback:
            assert isinstance(client, FastClient)
            client.on_fast_message = lambda topic, payload, retain: events.append(
                ("fast", bytes(topic), bytes(payload), retain)
            )

    def feed(self, chunk: bytes) -> None:
        if self.rc:
            return
        self.sock.deliver(chunk)
        # Stock paho handles one packet per loop_read; go on until the socket is drained.
        for _ in range(len(chunk) + 2):
            rc = self.client.loop_read()
            if rc:
                self.rc = rc
                return
            if not self.sock.inbox:
                break
        else:
            raise AssertionError("loop_read makes no progress")
        rc = self.client.loop_read()  # once more with nothing new: must change nothing
        if rc:
            self.rc = rc

    def result(self) -> tuple[list[tuple[Any, ...]], bytes, Optional[int]]:
        return self.events, bytes(self.sock.sent), self.rc


def run(factory: Callable[..., mqtt.Client], chunks: list[bytes], **kw: Any) -> Any:
    r = Run(factory, **kw)
    for chunk in chunks:
        r.feed(chunk)
    return r.result()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def project(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """What on_fast_message sees: (topic, payload, retain) for every message, in order."""
    out = []
    for e in events:
        if e[0] == "msg":
            out.append((e[1], e[2], e[4]))
        elif e[0] == "fast":
            out.append(e[1:])
    return out


@pytest.fixture(scope="module")
def reference() -> Any:
    return run(mqtt.Client, [STREAM])


def acks(sent: bytes) -> list[tuple[int, int]]:
    assert len(sent) % 4 == 0
    return [(sent[i], struct.unpack("!H", sent[i + 2 : i + 4])[0]) for i in range(0, len(sent), 4)]


# --- the tests --------------------------------------------------------------------------------


def test_reference_is_what_the_stream_says(reference: Any) -> None:
    events, sent, rc = reference
    assert rc is None
    kinds = [e[0] for e in events]
    assert kinds[:2] == ["connack", "suback"]
    msgs = [e for e in events if e[0] == "msg"]
    assert len(msgs) == 16
    # QoS 2 message 14 is delivered on its PUBREL, after the duplicate of 10.
    assert [m[6] for m in msgs[:8]] == [0, 10, 11, 12, 13, 10, 14, 0]
    assert msgs[3][7]["UserProperty"] == [("site", "lab"), ("k", "v")]
    assert msgs[3][7]["ContentType"] == "application/json"
    assert msgs[5][5] is True  # dup
    assert msgs[9][1] == b"" and msgs[9][7]["TopicAlias"] == 1  # alias not mapped by paho
    PUBACK, PUBREC, PUBCOMP = 0x40, 0x50, 0x70
    assert acks(sent) == [
        (PUBACK, 10),
        (PUBACK, 11),
        (PUBACK, 12),
        (PUBACK, 13),
        (PUBREC, 14),
        (PUBACK, 10),
        (PUBCOMP, 14),
        (PUBACK, 15),
        (PUBACK, 16),
        (PUBREC, 17),
        (PUBACK, 18),
        (PUBCOMP, 17),
        (PUBACK, 1),
    ]


def test_whole_stream_same(reference: Any) -> None:
    assert run(FastClient, [STREAM]) == reference


def test_every_single_split(reference: Any) -> None:
    """bytes[:k] then bytes[k:] for every k: a decoder taking a short packet shows here."""
    ref_events, ref_sent, ref_rc = reference
    ref_fast = project(ref_events)
    for k in range(len(STREAM) + 1):
        chunks = split(STREAM, [k])
        assert run(mqtt.Client, chunks) == reference, f"stock paho, split at {k}"
        assert run(FastClient, chunks) == reference, f"FastClient, split at {k}"
        events, sent, rc = run(FastClient, chunks, fast_callback=True)
        assert (project(events), sent, rc) == (ref_fast, ref_sent, ref_rc), f"fast cb, k={k}"


@pytest.mark.parametrize("seed", range(3))
def test_random_multi_splits(seed: int) -> None:
    stream = build_stream(big=70_000)  # remaining length of 3 bytes, more than one read
    reference = run(mqtt.Client, [stream])
    ref_fast = (project(reference[0]), *reference[1:])
    rng = random.Random(1000 + seed)
    for _ in range(40):
        cuts = rng.sample(range(1, len(stream)), rng.choice([2, 3, 5, 10, 40]))
        chunks = split(stream, cuts)
        assert run(mqtt.Client, chunks) == reference, cuts
        assert run(FastClient, chunks) == reference, cuts
        events, sent, rc = run(FastClient, chunks, fast_callback=True)
        assert (project(events), sent, rc) == ref_fast, cuts


def test_one_byte_at_a_time(reference: Any) -> None:
    """Bytes trickling in one at a time (the worst case for both decoders)."""
    assert run(FastClient, [bytes([b]) for b in STREAM]) == reference


MALFORMED = {
    # QoS 3 does not exist: stock paho drops the connection without delivering it.
    "qos3": b"\x36\x09\x00\x03a/b\x00\x07\x00x",
    # A property string holding U+0000 (paho raises MalformedPacket while decoding).
    "bad_property": b"\x30" + varint(14) + b"\x00\x03a/b" + b"\x07\x03\x00\x04a\x00bc" + b"p",
    # Remaining length of more than four bytes.
    "long_length": b"\x30\xff\xff\xff\xff\x01",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_packet_after_good_ones(name: str) -> None:
    # The first packet of a read goes through paho's _packet_read; the next ones through
    # FastClient's own decoder.
    good = Encoder().pingresp().publish("a/b", b"1", qos=1, mid=5).publish("a/c", b"2").data()
    stream = good + MALFORMED[name] + Encoder().publish("a/d", b"3", qos=1, mid=6).data()
    reference = run(mqtt.Client, [stream])
    assert reference[2] == mqtt.MQTTErrorCode.MQTT_ERR_PROTOCOL
    assert len(reference[0]) == 2
    for k in range(len(stream) + 1):
        chunks = split(stream, [k])
        assert run(mqtt.Client, chunks) == reference, k
        assert run(FastClient, chunks) == reference, k
