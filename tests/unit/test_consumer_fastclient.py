"""FastClient parses a PUBLISH stream in any split, hands it over in order, batches PUBACKs."""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from edge_consumer.fastclient import SUPPORTED, FastClient
from mqtt_bytes import varint

pytestmark = pytest.mark.skipif(not SUPPORTED, reason="paho internals differ: stock client used")


def publish(topic: str, payload: bytes, qos: int, mid: int, props: bytes = b"\x00") -> bytes:
    body = struct.pack("!H", len(topic)) + topic.encode()
    if qos:
        body += struct.pack("!H", mid)
    body += props + payload
    return bytes([0x30 | (qos << 1)]) + varint(len(body)) + body


@pytest.fixture
def wired() -> Iterator[tuple[FastClient, socket.socket, list[tuple[str, bytes]]]]:
    ours, broker = socket.socketpair()
    ours.setblocking(False)
    client = FastClient(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id="t",
        protocol=mqtt.MQTTv5,
    )
    got: list[tuple[str, bytes]] = []
    client.on_fast_message = lambda topic, payload, retain: got.append((topic.decode(), payload))
    client.on_message = lambda _c, _u, msg: got.append((msg.topic, msg.payload))
    client._sock = ours  # type: ignore[assignment]  # as if connected
    yield client, broker, got
    client._sock = None
    ours.close()
    broker.close()


def pump(client: FastClient, broker: socket.socket, data: bytes, rng: random.Random) -> None:
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 7, 50, 300, 5000, 70000])
        broker.sendall(data[pos : pos + step])
        pos += step
        assert client.loop_read() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    for _ in range(5):
        client.loop_read()


def acked(broker: socket.socket) -> list[int]:
    broker.setblocking(False)
    data = b""
    try:
        while True:
            data += broker.recv(65536)
    except BlockingIOError:
        pass
    mids = []
    for i in range(0, len(data), 4):
        header, length, mid = struct.unpack("!BBH", data[i : i + 4])
        assert (header, length) == (0x40, 2)
        mids.append(mid)
    return mids


@pytest.mark.parametrize("seed", range(4))
def test_stream_in_random_splits(wired: tuple[FastClient, socket.socket, list], seed: int) -> None:
    client, broker, got = wired
    rng = random.Random(seed)
    expected = []
    stream = b""
    for i in range(400):
        topic = f"iot/telemetry/dev{i % 7}"
        payload = bytes(rng.randrange(256) for _ in range(rng.choice([0, 5, 200, 3000])))
        qos = i % 2
        props = b"\x00" if i % 13 else b"\x02\x01\x01"  # payload-format property: paho path
        stream += publish(topic, payload, qos, mid=i + 1, props=props)
        expected.append((topic, payload))
    pump(client, broker, stream, rng)
    assert got == expected
    assert sorted(acked(broker)) == [i + 1 for i in range(400) if i % 2]


def test_pingresp_and_suback_go_to_paho(wired: tuple[FastClient, socket.socket, list]) -> None:
    client, broker, got = wired
    stream = publish("a/b", b"1", 1, 9) + b"\xd0\x00" + publish("a/c", b"2", 0, 0)
    pump(client, broker, stream, random.Random(0))
    assert got == [("a/b", b"1"), ("a/c", b"2")]
    assert acked(broker) == [9]


def test_closed_connection_is_reported(wired: tuple[FastClient, socket.socket, list]) -> None:
    client, broker, _ = wired
    broker.shutdown(socket.SHUT_WR)
    assert client.loop_read() != mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS


def test_deferred_acks_wait_for_ack_later_and_go_out_in_its_order(
    wired: tuple[FastClient, socket.socket, list],
) -> None:
    client, broker, _ = wired
    client.defer_acks()
    seen: list[tuple[int, int]] = []
    client.on_fast_message = lambda *_: seen.append((client.current_mid, client.generation))
    # A packet read while the buffer was empty goes through paho's own code, as message.mid.
    client.on_message = lambda _c, _u, msg: seen.append((msg.mid, client.generation))
    stream = b"".join(publish("iot/telemetry/d", b"x", 1, mid) for mid in (5, 6, 7))
    stream += publish("iot/telemetry/d", b"q0", 0, 0)
    broker.sendall(stream)
    client.loop_read()
    assert [mid for mid, _ in seen] == [5, 6, 7, 0]
    assert acked(broker) == []  # nothing acknowledged by handling alone
    generation = seen[0][1]
    for mid in (5, 6):
        assert client.ack_later(mid, generation)
    assert client.want_write()
    assert client.loop_write() == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS
    assert acked(broker) == [5, 6]


def test_a_deferred_ack_of_a_closed_connection_is_dropped(
    wired: tuple[FastClient, socket.socket, list],
) -> None:
    client, broker, _ = wired
    client.defer_acks()
    broker.sendall(publish("iot/telemetry/d", b"x", 1, 9))
    client.loop_read()
    old = client.generation
    assert client.ack_later(9, old)  # queued, not yet sent
    spare, peer = socket.socketpair()
    client._sock_close()  # the connection drops: its packet ids mean nothing on the next one
    assert not client._deferred
    client._sock = spare  # type: ignore[assignment]  # reconnected
    assert client.generation == old + 1
    assert not client.ack_later(9, old)
    client.loop_write()
    broker.settimeout(2)
    assert broker.recv(65536) == b""  # the old connection closed with nothing acknowledged
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):  # nor on the new one
        peer.recv(65536)
    client._sock = None
    spare.close()
    peer.close()
