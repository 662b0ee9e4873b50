"""edge-agent over TLS to a real Mosquitto: CA verification with hostname checking on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HEADER = '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n'
ROW = '"1.6E9","b8:27:eb:bf:9d:51","0.005","51.0","false","0.0076","false","0.0204","22.7"\n'


def make_certs(d: Path) -> None:
    """A throwaway CA and a server certificate valid for DNS:localhost only."""

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=edge-test-ca")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=localhost")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip


@pytest.fixture
def tls_broker(tmp_path: Path, broker_factory):  # type: ignore[no-untyped-def]
    if not shutil.which("openssl"):
        pytest.skip("needs openssl")
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certs(certs)
    broker = broker_factory(
        "tls-broker",
        [f"cafile {certs}/ca.crt", f"certfile {certs}/server.crt", f"keyfile {certs}/server.key"],
    )
    broker.start()
    return broker, certs


def run_agent(tmp_path: Path, broker_host: str, port: int, ca: Path, timeout: float):  # type: ignore[no-untyped-def]
    data = tmp_path / "slice.csv"
    data.write_text(HEADER + ROW)
    argv = [sys.executable, "-m", "edge_agent", "--broker", broker_host, "--port", str(port),
            "--tls-ca", str(ca), "--dataset", str(data), "--state-dir", str(tmp_path / "state"),
            "--device-id", "02:42:ac:11:00:07", "--rate", "20", "--count", "5"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "agent")}
    try:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return e


def test_publishes_over_tls_with_verified_hostname(tls_broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broker, certs = tls_broker
    result = run_agent(tmp_path, "localhost", broker.port, certs / "ca.crt", timeout=30)
    assert isinstance(result, subprocess.CompletedProcess), "agent did not finish"
    assert result.returncode == 0, result.stderr
    assert "connected to localhost" in result.stderr
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert state["seq"] == 5


def test_hostname_mismatch_is_refused(tls_broker, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broker, certs = tls_broker
    # The certificate names DNS:localhost, not the IP address: verification must fail.
    result = run_agent(tmp_path, "127.0.0.1", broker.port, certs / "ca.crt", timeout=4)
    assert isinstance(result, subprocess.TimeoutExpired), "agent must keep retrying"
    stderr = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr or ""
    assert "certificate verify failed" in stderr or "mismatch" in stderr, stderr
    assert "connected to" not in stderr
