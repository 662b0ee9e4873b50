"""The monitor's web app: routes via Starlette's TestClient, /events through a real uvicorn,
Basic auth off loopback, and the refusal to serve off loopback without credentials."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest
from edge_agent.protocol import telemetry
from edge_consumer.accounting import Accounting
from edge_consumer.cli import main
from edge_consumer.config import HTTP_PASSWORD_ENV, ConfigError, load_config
from edge_consumer.history import RingHistory
from edge_consumer.metrics import build_registry
from edge_consumer.monitor import DeviceInfo, Monitor
from edge_consumer.web import WebServer, create_app
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():  # starlette >= 0.5x prefers httpx2; httpx is what we ship
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

A, B = "02:42:ac:11:00:0a", "02:42:ac:11:00:0b"
DATA = {"temp": 21.5, "humidity": 45.0, "co": 0.005, "lpg": 0.0076, "smoke": 0.02}
ROUTES = ("/", "/static/app.js", "/static/style.css", "/vendor/chart.js", "/events",
          "/api/devices", f"/api/devices/{A}/history", "/metrics", "/healthz")  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fed_monitor(clock: Optional[Any] = None) -> Monitor:
    acc = Accounting()
    history = RingHistory()
    acc.recorder = history.record
    now = time.time()
    info = {A: DeviceInfo("pi-0a", "arm64", "pi-host-1"), B: DeviceInfo("pi-0b", "amd64", None)}
    mon = Monitor(acc, history, device_info=info, connected=lambda: True)
    if clock is not None:
        mon.clock = clock
    acc.handle_status(f"iot/status/{A}", b"online", now - 5)
    for seq in range(5):
        ts = now - 5 + seq
        body = telemetry(A, "pi-0a", ts, seq, {**DATA, "light": True, "motion": False})
        acc.handle(f"iot/telemetry/{A}", body, ts)
    return mon


def make_app(
    mon: Monitor, chartjs: Optional[str] = None, auth: Optional[tuple[str, str]] = None
) -> Starlette:
    return create_app(mon, build_registry(mon), chartjs=chartjs, auth=auth)


@pytest.fixture
def chartjs(tmp_path: Path) -> str:
    path = tmp_path / "chart.min.js"
    path.write_text("/* Chart.js stand-in */ window.Chart = function () {};\n")
    return str(path)


@pytest.fixture
def client(chartjs: str) -> Iterator[TestClient]:
    with TestClient(make_app(fed_monitor(), chartjs)) as c:
        yield c


def test_page_and_its_assets_load_nothing_from_the_internet(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/vendor/chart.js" in sources and "/static/app.js" in sources
    assert all(s.startswith("/") or s.startswith("data:") for s in sources), sources
    for asset in ("/static/app.js", "/static/style.css"):
        response = client.get(asset)
        assert response.status_code == 200
        assert not re.search(r"https?://", response.text), asset  # no CDN, no web font
        assert "@import" not in response.text and "url(" not in response.text
    assert client.get("/static/nope.js").status_code == 404


def test_chartjs_is_served_from_the_configured_file(client: TestClient, chartjs: str) -> None:
    response = client.get("/vendor/chart.js")
    assert response.status_code == 200 and "javascript" in response.headers["content-type"]
    assert response.text == Path(chartjs).read_text()


def test_missing_chartjs_gives_the_page_a_note_instead_of_a_broken_script() -> None:
    with TestClient(make_app(fed_monitor(), "/nonexistent/chart.js")) as c:
        response = c.get("/vendor/chart.js")
        assert response.status_code == 200
        assert response.text == 'window.EDGE_CHARTJS_MISSING = "/nonexistent/chart.js";\n'
        assert "EDGE_CHARTJS_MISSING" in c.get("/static/app.js").text  # the page reads it


def test_api_devices(client: TestClient) -> None:
    body = client.get("/api/devices").json()
    devices = {d["id"]: d for d in body["devices"]}
    assert set(devices) == {A, B}  # B is only in the device-info file
    a = devices[A]
    assert a["online"] is True and a["name"] == "pi-0a" and a["arch"] == "arm64"
    assert (a["received"], a["gaps"], a["temp"], a["light"]) == (5, 0, 21.5, True)
    assert devices[B]["online"] is False and devices[B]["received"] == 0
    assert body["totals"]["online"] == 1 and body["totals"]["offline"] == 1
    assert body["totals"]["received"] == 5


def test_history(client: TestClient) -> None:
    body = client.get(f"/api/devices/{A}/history").json()
    series = body["series"]
    assert len(series["ts"]) == 5 and series["temp"] == [21.5] * 5 and series["light"] == [1.0] * 5
    assert len(client.get(f"/api/devices/{A}/history?minutes=0.05").json()["series"]["ts"]) <= 4
    assert client.get(f"/api/devices/{B}/history").status_code == 404
    assert client.get(f"/api/devices/{A}/history?minutes=x").status_code == 400


def test_metrics_and_healthz(client: TestClient) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(response.text)}
    assert {"edge_fleet_device_online", "edge_fleet_devices", "process_cpu_seconds"} <= names
    assert client.get("/healthz").json() == {"ok": True, "connected": True, "broker_up": False}


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_basic_auth_guards_every_route(chartjs: str) -> None:
    app = make_app(fed_monitor(), chartjs, auth=("admin", "s3cret:with colon"))
    with TestClient(app) as c:
        for route in ROUTES:
            if route == "/events":
                continue  # an endless stream; checked below without credentials only
            refused = c.get(route)
            assert refused.status_code == 401, route
            assert refused.headers["www-authenticate"].startswith('Basic realm="edge-fleet"')
            assert c.get(route, headers=basic("admin", "wrong")).status_code == 401
            assert c.get(route, headers=basic("root", "s3cret:with colon")).status_code == 401
            assert c.get(route, headers=basic("admin", "s3cret:with colon")).status_code == 200
        assert c.get("/events").status_code == 401
        for header in ("Basic !!!", "Bearer abc", "Basic " + base64.b64encode(b"admin").decode()):
            assert c.get("/healthz", headers={"Authorization": header}).status_code == 401


def test_loopback_needs_no_credentials(client: TestClient) -> None:
    for route in ROUTES:
        if route != "/events":
            assert client.get(route).status_code == 200, route


@pytest.mark.parametrize("bind", ["0.0.0.0", "192.0.2.7", "::", "monitor.example"])
def test_non_loopback_without_credentials_is_a_usage_error(
    bind: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(HTTP_PASSWORD_ENV, raising=False)
    for extra in ([], ["--http-user", "admin"]):
        code = main(["--http-bind", bind, "--http-port", "9100", *extra])
        err = capsys.readouterr().err
        assert code == 2
        assert err.count("\n") == 1, err  # one clear line
        assert f"{bind} is not a loopback address" in err and HTTP_PASSWORD_ENV in err


def test_http_settings_from_flags_and_environment(tmp_path: Path) -> None:
    env = {HTTP_PASSWORD_ENV: "pw", "EDGE_CONSUMER_HTTP_PORT": "9100"}
    c = load_config(["--http-bind", "0.0.0.0", "--http-user", "admin"], env)
    assert (c.http_bind, c.http_port, c.http_auth) == ("0.0.0.0", 9100, ("admin", "pw"))
    assert "pw" not in repr(c)
    c = load_config(["--http-port", "0"], env)  # the flag wins: server off
    assert c.http_port == 0
    c = load_config([], {"EDGE_CONSUMER_HTTP_PORT": "9100", "EDGE_CONSUMER_OFFLINE_AFTER": "7.5"})
    assert (c.http_bind, c.http_auth, c.offline_after) == ("127.0.0.1", None, 7.5)
    assert c.chartjs == "/usr/share/javascript/chart.js/chart.min.js"
    with pytest.raises(ConfigError, match="--http-user and EDGE_CONSUMER_HTTP_PASSWORD"):
        load_config(["--http-port", "9100", "--http-user", "admin"], {})
    with pytest.raises(ConfigError, match="--offline-after: '0' must be a number > 0"):
        load_config(["--offline-after", "0"], {})
    with pytest.raises(ConfigError, match="--http-port: 'x' is not a port number"):
        load_config(["--http-port", "x"], {})
    bad = tmp_path / "devices.json"
    bad.write_text("[1]")
    with pytest.raises(ConfigError, match=r"--device-info: .* must hold a JSON object"):
        load_config(["--device-info", str(bad)], {})
    assert load_config(["--broker", "b"], {"MQTT_BROKER": "e"}).broker == "b"


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[6:])


def test_events_stream_through_a_real_server_and_stop_ends_it() -> None:
    clock_offset = [0.0]
    mon = fed_monitor(clock=lambda: time.time() + clock_offset[0])
    server = WebServer(make_app(mon, None), "127.0.0.1", free_port())
    server.start()
    url = f"http://127.0.0.1:{server.address[1]}"
    try:
        with httpx.stream("GET", url + "/events", timeout=10) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            first = next(events)
            assert first["totals"]["online"] == 1 and first["columns"][0] == "id"
            started = time.monotonic()
            clock_offset[0] = 60.0  # A falls silent for a minute
            second = next(events)
            assert time.monotonic() - started < 2.0  # pushed within the 1 s tick
            assert second["totals"]["online"] == 0 and second["time"] > first["time"]
        # One more stream stays open while the server stops: stop() must not hang on it.
        with contextlib.ExitStack() as open_stream:
            stream = open_stream.enter_context(httpx.stream("GET", url + "/events", timeout=10))
            next(sse_events(stream))
            started = time.monotonic()
            server.stop()
            stopped = time.monotonic() - started
    finally:
        server.stop()
    assert stopped < 4.0
    assert not server.thread.is_alive()
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/healthz", timeout=1)


def test_port_in_use_fails_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match=r"cannot serve HTTP on 127\.0\.0\.1"):
            WebServer(make_app(fed_monitor()), "127.0.0.1", taken.getsockname()[1])
