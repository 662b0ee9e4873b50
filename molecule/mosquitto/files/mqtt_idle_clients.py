#!/usr/bin/env python3
"""Open N idle MQTT 3.1.1 clients to a broker at once and count the CONNACKs that accept them.

Standard library only, so that it runs on the broker host itself:

    mqtt_idle_clients.py --count 1500 --username U --password P [--host H] [--port P]

Every client connects with its own client ID and stays connected (keepalive 600 s) until all
have an answer or --timeout passes; a broker out of file descriptors accepts no more TCP
connections, so the clients beyond its limit never get a CONNACK. Prints one JSON line:
{"attempted", "accepted", "refused", "closed", "no_answer", "seconds"}.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import struct
import time


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, username: str, password: str, keepalive: int) -> bytes:
    flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)  # clean session
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + _string(client_id)
    if username:
        body += _string(username)
    if password:
        body += _string(password)
    length, encoded = len(body), b""
    while True:
        byte, length = length % 128, length // 128
        encoded += bytes([byte | (0x80 if length else 0)])
        if not length:
            break
    return b"\x10" + encoded + body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--username", default="")
    parser.add_argument("--password", default="")
    parser.add_argument("--prefix", default="idle-client-")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for answers")
    parser.add_argument("--hold", type=float, default=0.0, help="seconds to keep them open after")
    args = parser.parse_args()

    # This side needs one descriptor per client as well.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.count + 64
    if hard != resource.RLIM_INFINITY and hard < wanted:
        parser.error(f"--count {args.count} needs {wanted} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

    started = time.monotonic()
    selector = selectors.DefaultSelector()
    result = {"attempted": args.count, "accepted": 0, "refused": 0, "closed": 0, "no_answer": 0}
    sockets = []
    for number in range(args.count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex((args.host, args.port))
        packet = connect_packet(f"{args.prefix}{number}", args.username, args.password, 600)
        selector.register(sock, selectors.EVENT_WRITE, [packet, b""])
        sockets.append(sock)

    pending = args.count
    deadline = started + args.timeout
    while pending and time.monotonic() < deadline:
        for key, _events in selector.select(timeout=0.5):
            sock, state = key.fileobj, key.data
            try:
                if state[0]:  # connected (or failed): send the CONNECT
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if error:
                        raise OSError(error, "connect failed")
                    sent = sock.send(state[0])
                    state[0] = state[0][sent:]
                    if not state[0]:
                        selector.modify(sock, selectors.EVENT_READ, state)
                    continue
                data = sock.recv(4 - len(state[1]))
                if not data:
                    raise ConnectionResetError("closed by the broker")
                state[1] += data
                if len(state[1]) < 4:
                    continue
                # CONNACK: 0x20 0x02 <session present> <return code>
                accepted = state[1][0] == 0x20 and state[1][3] == 0
                result["accepted" if accepted else "refused"] += 1
            except OSError:
                result["closed"] += 1
            selector.unregister(sock)
            pending -= 1
    result["no_answer"] = pending
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result), flush=True)
    if args.hold > 0:
        time.sleep(args.hold)
    for sock in sockets:
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
