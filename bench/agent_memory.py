#!/usr/bin/env python3
"""Memory of edge-agent: K agents with TLS sharing one host (PSS), and one agent's peak RSS.

Starts its own mosquitto on a free loopback port (TLS with a throwaway CA unless --no-tls).

1. Fleet (--agents K, default 10): K agents at the default 5 s interval, configured through
   environment variables like the systemd unit, run for --settle seconds; then each one's
   /proc/<pid>/smaps_rollup is read. Agents on one host share python's and the libraries'
   file-backed pages, so PSS (each shared page divided by the processes mapping it) and
   Private_Dirty (mostly the Python heap) are what one more agent costs. Target: PSS <= 12 MB.
2. Peak RSS of one agent publishing at --rate for --duration seconds per slice size (--rows),
   sampled from VmRSS (VmHWM alongside). Skip with --rows (no values).

By default the agent is the zipapp, built into the temp dir with this interpreter's paho
(bytecode for this Python version), run as `--python [--python-flags] edge-agent.pyz`, the
way the unit runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n'
ROLLUP = ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Clean", "Private_Dirty", "Swap")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_slice(path: Path, rows: int) -> None:
    """Synthetic rows in the published format (values only need realistic widths)."""
    rng = random.Random(0)
    ts = 1.5945120943859746e9
    with open(path, "w") as f:
        f.write(HEADER)
        for _ in range(rows):
            ts += rng.uniform(1, 7)
            co = rng.uniform(0.004, 0.008)
            f.write(
                f'"{ts!r}","b8:27:eb:bf:9d:51","{co!r}","{rng.uniform(45, 63)!r}",'
                f'"{str(rng.random() < 0.28).lower()}","{co * 1.6!r}",'
                f'"{str(rng.random() < 0.01).lower()}","{co * 4.2!r}","{rng.uniform(21, 24)!r}"\n'
            )


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def smaps_rollup_kb(pid: int) -> dict[str, int]:
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1])
    return values


def make_certs(d: Path, client: bool = False) -> list[str]:
    """Throwaway CA + server cert for localhost (+ a client cert); mosquitto listener options."""

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=bench-ca")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=localhost")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    ssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.crt", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    options = [f"cafile {d}/ca.crt", f"certfile {d}/srv.crt", f"keyfile {d}/srv.key"]
    if client:
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out",
            "client.csr", "-subj", "/CN=bench-agent")  # fmt: skip
        ssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "client.crt", "-days", "1")  # fmt: skip
        options.append("require_certificate true")
    return options


@contextlib.contextmanager
def mosquitto(work: Path, tls: bool, client_cert: bool = False) -> Iterator[int]:
    """Run mosquitto on a free loopback port for the duration of the block; yields the port."""
    port = free_port()
    conf = work / "mosquitto.conf"
    options = make_certs(work, client_cert) if tls else []
    conf.write_text(
        "\n".join([f"listener {port} 127.0.0.1", "allow_anonymous true", *options])
        # as root, mosquitto would switch to user "mosquitto", who cannot read our tmp dir
        + (f"\nuser {getpass.getuser()}\n" if os.geteuid() == 0 else "\n")
    )
    broker = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit("mosquitto did not start")
        yield port
    finally:
        broker.terminate()
        broker.wait()


def agent_command(args: argparse.Namespace, work: Path) -> list[str]:
    """The interpreter, its flags and the agent, as the unit's ExecStart runs it."""
    flags = shlex.split(args.python_flags)
    if args.source:
        return [args.python, *flags, "-m", "edge_agent"]
    pyz = args.pyz
    if not pyz:
        pyz = str(work / "edge-agent.pyz")
        subprocess.run(
            [sys.executable, str(ROOT / "agent" / "build_pyz.py"), "--out", pyz],
            check=True,
            capture_output=True,
        )
    return [args.python, *flags, pyz]


def agent_env(args: argparse.Namespace, work: Path, port: int, **settings: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MQTT_PORT": str(port), **settings}
    if args.source:
        env["PYTHONPATH"] = str(ROOT / "agent")
    if args.tls:  # hostname verification needs the name on the certificate
        env.update(MQTT_BROKER="localhost", MQTT_TLS_CA=str(work / "ca.crt"))
        if args.client_cert:
            env["MQTT_TLS_CERT"] = str(work / "client.crt")
            env["MQTT_TLS_KEY"] = str(work / "client.key")
    else:
        env["MQTT_BROKER"] = "127.0.0.1"
    return env


def stop(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    return [p.wait(20) for p in procs]


def fleet(args: argparse.Namespace, cmd: list[str], work: Path, port: int) -> None:
    procs = []
    for i in range(args.agents):
        data = work / f"fleet-{i}.csv"
        write_slice(data, args.fleet_rows)
        env = agent_env(
            args,
            work,
            port,
            DEVICE_NAME=f"bench-{i:04d}",
            DEVICE_ID=f"02:42:ac:11:{i // 256:02x}:{i % 256:02x}",
            DATASET_PATH=str(data),
            STATE_DIR=str(work / f"fleet-state-{i}"),
            PUBLISH_INTERVAL=str(args.interval),
        )
        log = open(work / f"fleet-{i}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=log))
        log.close()
    time.sleep(args.settle)
    alive = [p for p in procs if p.poll() is None]
    samples = [smaps_rollup_kb(p.pid) for p in alive]
    codes = stop(procs)
    seqs = []
    for i in range(args.agents):
        with contextlib.suppress(OSError, ValueError):
            seqs.append(json.loads((work / f"fleet-state-{i}" / "state.json").read_text())["seq"])
    if not samples:
        print(f"fleet: no agent survived; see {work}/fleet-0.log")
        print((work / "fleet-0.log").read_text()[-2000:])
        return

    def mb(key: str) -> str:
        vals = [s.get(key, 0) / 1024 for s in samples]
        return f"{sum(vals) / len(vals):5.2f} ({min(vals):.2f}-{max(vals):.2f})"

    print(
        f"fleet of {args.agents} agents ({len(alive)} alive after {args.settle:.0f} s), "
        f"interval {args.interval} s, {args.fleet_rows}-row slices; MB per agent, mean (min-max):"
    )
    for key in ROLLUP:
        print(f"  {key:<14}{mb(key)}")
    print(f"  exit codes {sorted(set(codes))}, published seq {min(seqs, default=0)}-"
          f"{max(seqs, default=0)} per agent")  # fmt: skip


def peak_rss(args: argparse.Namespace, cmd: list[str], data: Path, work: Path, port: int):
    state = work / f"state-{data.stem}"
    argv = [*cmd, "--rate", str(args.rate), "--log-level", "WARNING"]
    env = agent_env(
        args,
        work,
        port,
        DATASET_PATH=str(data),
        STATE_DIR=str(state),
        DEVICE_ID="02:42:ac:11:00:01",
    )
    proc = subprocess.Popen(argv, env=env)
    peak = last = 0
    deadline = time.monotonic() + args.duration
    while time.monotonic() < deadline and proc.poll() is None:
        last = status_kb(proc.pid, "VmRSS")
        peak = max(peak, last)
        time.sleep(0.05)
    hwm = status_kb(proc.pid, "VmHWM") if proc.poll() is None else 0
    (code,) = stop([proc])
    seq = json.loads((state / "state.json").read_text())["seq"]
    return peak / 1024, hwm / 1024, last / 1024, seq, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10, help="fleet size K (0: skip)")
    parser.add_argument("--interval", type=float, default=5.0, help="fleet PUBLISH_INTERVAL")
    parser.add_argument("--settle", type=float, default=30.0, help="fleet run time before reading")
    parser.add_argument("--fleet-rows", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=50.0, help="peak-RSS run: msg/s")
    parser.add_argument("--duration", type=float, default=15.0, help="peak-RSS run: s per slice")
    parser.add_argument("--rows", type=int, nargs="*", default=[2000, 135000])
    parser.add_argument("--pyz", help="this edge-agent.pyz instead of one built from agent/")
    parser.add_argument("--source", action="store_true", help="python -m edge_agent from agent/")
    parser.add_argument("--python", default="/usr/bin/python3", help="interpreter for the agent")
    parser.add_argument("--python-flags", default="", help='e.g. "-I -S", as in ExecStart')
    parser.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--client-cert", action="store_true", help="mutual TLS")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="agent-mem-") as tmp:
        work = Path(tmp)
        cmd = agent_command(args, work)
        with mosquitto(work, args.tls, args.client_cert) as port:
            version = subprocess.run(
                [args.python, "--version"], capture_output=True, text=True
            ).stdout.strip()
            tls = ("mutual TLS" if args.client_cert else "TLS") if args.tls else "plain TCP"
            print(f"{shlex.join(cmd)} ({version}), {tls}")
            if args.agents:
                fleet(args, cmd, work, port)
            for rows in args.rows:
                data = work / f"slice-{rows}.csv"
                write_slice(data, rows)
                peak, hwm, end, seq, code = peak_rss(args, cmd, data, work, port)
                size = data.stat().st_size / 1e6
                print(
                    f"one agent, {rows:>7} rows ({size:4.1f} MB csv), rate {args.rate}/s for "
                    f"{args.duration:.0f} s: peak VmRSS {peak:4.1f} MB (VmHWM {hwm:4.1f}), "
                    f"at the end {end:4.1f} MB; published {seq} readings, exit {code}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
