#!/usr/bin/env python3
"""Peak RSS of edge-agent while publishing, for a fleet-sized and a full-history slice.

Starts its own mosquitto on a free loopback port, runs the agent at --rate for --duration
seconds per slice size, samples VmRSS from /proc/<pid>/status and prints the peak in MB
(VmHWM, the kernel's own high-water mark, alongside). Target: <= 20 MB.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n'


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


def make_certs(d: Path) -> list[str]:
    """Throwaway CA + server cert for localhost; returns the mosquitto listener options."""

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "1", "-subj", "/CN=bench-ca")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr",
        "-subj", "/CN=localhost")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    ssl("x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.crt", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip
    return [f"cafile {d}/ca.crt", f"certfile {d}/srv.crt", f"keyfile {d}/srv.key"]


def measure(cmd: list[str], data: Path, work: Path, port: int, rate: float, duration: float):
    state = work / f"state-{data.stem}"
    argv = [*cmd, "--port", str(port), "--dataset", str(data),
            "--state-dir", str(state), "--device-id", "02:42:ac:11:00:01",
            "--rate", str(rate), "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(ROOT / "agent")})
    peak = last = 0
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline and proc.poll() is None:
        last = status_kb(proc.pid, "VmRSS")
        peak = max(peak, last)
        time.sleep(0.05)
    hwm = status_kb(proc.pid, "VmHWM") if proc.poll() is None else 0
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(15)
    seq = json.loads((state / "state.json").read_text())["seq"]
    return peak / 1024, hwm / 1024, last / 1024, seq, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 135000])
    parser.add_argument("--pyz", help="measure this edge-agent.pyz instead of python -m edge_agent")
    parser.add_argument("--python", default=sys.executable, help="interpreter to run the agent")
    parser.add_argument("--tls", action="store_true", help="TLS listener (needs openssl)")
    args = parser.parse_args()
    cmd = [args.python, args.pyz] if args.pyz else [args.python, "-m", "edge_agent"]

    with tempfile.TemporaryDirectory(prefix="agent-mem-") as tmp:
        work = Path(tmp)
        port = free_port()
        conf = work / "mosquitto.conf"
        options = make_certs(work) if args.tls else []
        conf.write_text(
            "\n".join([f"listener {port} 127.0.0.1", "allow_anonymous true", *options])
            # as root, mosquitto would switch to user "mosquitto", who cannot read our tmp dir
            + (f"\nuser {getpass.getuser()}\n" if os.geteuid() == 0 else "\n")
        )
        if args.tls:  # hostname verification needs the name on the certificate
            cmd += ["--broker", "localhost", "--tls-ca", str(work / "ca.crt")]
        else:
            cmd += ["--broker", "127.0.0.1"]
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
            version = subprocess.run(
                [args.python, "--version"], capture_output=True, text=True
            ).stdout.strip()
            print(
                f"{args.pyz or '-m edge_agent'} on {args.python} ({version}), "
                f"{'TLS' if args.tls else 'plain TCP'}, rate {args.rate}/s, "
                f"{args.duration:.0f} s per slice"
            )
            for rows in args.rows:
                data = work / f"slice-{rows}.csv"
                write_slice(data, rows)
                peak, hwm, end, seq, code = measure(cmd, data, work, port, args.rate, args.duration)
                size = data.stat().st_size / 1e6
                print(
                    f"{rows:>7} rows ({size:4.1f} MB csv): peak VmRSS {peak:4.1f} MB "
                    f"(VmHWM {hwm:4.1f}), at the end {end:4.1f} MB; "
                    f"published {seq} readings, exit {code}"
                )
        finally:
            broker.terminate()
            broker.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
