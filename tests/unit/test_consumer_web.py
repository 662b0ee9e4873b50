"""The monitor's web app: routes via Starlette's TestClient, /events through a real uvicorn,
Basic auth off loopback, and the refusal to serve off loopback without credentials."""

from __future__ import annotations

import asyncio
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
from edge_consumer.anomaly import Anomaly, AnomalyEngine
from edge_consumer.anomaly.worker import InlineDetector
from edge_consumer.cli import main
from edge_consumer.config import HTTP_PASSWORD_ENV, ConfigError, load_config
from edge_consumer.history import RingHistory, StoreHistory
from edge_consumer.ingest import Ingest
from edge_consumer.metrics import build_registry
from edge_consumer.monitor import ROW_COLUMNS, DeviceInfo, Monitor
from edge_consumer.store import AnomalyRow, TelemetryStore, open_store
from edge_consumer.validation import Telemetry
from edge_consumer.web import WebServer, create_app
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from support.ports import free_port

with warnings.catch_warnings():  # starlette >= 0.5x prefers httpx2; httpx is what we ship
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient

A, B = "02:42:ac:11:00:0a", "02:42:ac:11:00:0b"
DATA = {"temp": 21.5, "humidity": 45.0, "co": 0.005, "lpg": 0.0076, "smoke": 0.02}
ROUTES = ("/", "/static/app.js", "/static/style.css", "/vendor/chart.js", "/events",
          "/api/devices", f"/api/devices/{A}/history", "/api/anomalies", "/metrics",
          "/healthz")  # fmt: skip


def fed_monitor(
    clock: Optional[Any] = None, ingest: Optional[Ingest] = None, history: Any = None
) -> Monitor:
    """A monitor that has heard device A five times (B is only in the device-info file);
    with `ingest`, each reading also goes through it (the anomaly detectors, the store)."""
    acc = Accounting()
    if history is None:
        history = RingHistory()
        acc.recorder = history.record
    now = time.time()
    info = {A: DeviceInfo("pi-0a", "arm64", "pi-host-1"), B: DeviceInfo("pi-0b", "amd64", None)}
    mon = Monitor(acc, history, device_info=info, connected=lambda: True, ingest=ingest)
    if clock is not None:
        mon.clock = clock
    acc.handle_status(f"iot/status/{A}", b"online", now - 5)
    for seq in range(5):
        feed(mon, A, seq, now - 5 + seq, DATA)
    return mon


def feed(mon: Monitor, device_id: str, seq: int, ts: float, data: dict[str, float]) -> None:
    """One reading as the subscriber handles it: counted, then to the Ingest (if any)."""
    body = telemetry(device_id, "pi-0a", ts, seq, {**data, "light": True, "motion": False})
    t = mon.acc.handle(f"iot/telemetry/{device_id}", body, ts)
    assert isinstance(t, Telemetry), t
    if mon.ingest is not None:
        mon.ingest.reading(t, None, body)
        mon.ingest.tick(ts, connected=False)  # the main loop's pump: the findings come back


def finding(n: int, device_id: str = A, kind: str = "spike", sensor: str = "temp") -> Anomaly:
    ts = time.time() - 100 + n
    return Anomaly(device_id, sensor, kind, n, ts, 30.0 + n, 12.5, f"finding {n}")


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


# --- anomalies ------------------------------------------------------------------------------

FAILED_READ = {**DATA, "temp": 0.0, "humidity": 1.1}  # a DHT's failed read: "impossible"


def rows_by_id(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row[0]: dict(zip(snap["columns"], row)) for row in snap["devices"]}


def test_snapshot_without_anomaly_detection_says_so() -> None:
    snap = fed_monitor().snapshot()
    assert "anomalies" in ROW_COLUMNS and list(snap["columns"]) == list(ROW_COLUMNS)
    assert {d: r["anomalies"] for d, r in rows_by_id(snap).items()} == {A: 0, B: 0}
    assert snap["totals"]["anomalies"] == 0
    assert (snap["anomaly_detection"], snap["store"], snap["recent_anomalies"]) == (
        False,
        False,
        [],
    )
    # A store without the detectors: readings kept, detection still off.
    ingest = Ingest()
    assert fed_monitor(ingest=ingest).snapshot()["anomaly_detection"] is False


def test_snapshot_counts_a_real_engines_findings_per_device() -> None:
    mon = fed_monitor(ingest=Ingest(detector=InlineDetector(AnomalyEngine())))
    assert mon.snapshot()["totals"]["anomalies"] == 0  # five ordinary readings
    feed(mon, A, 5, time.time(), FAILED_READ)
    snap = mon.snapshot()
    assert snap["anomaly_detection"] is True and snap["store"] is False
    rows = rows_by_id(snap)
    assert (rows[A]["anomalies"], rows[B]["anomalies"]) == (1, 0)
    assert snap["totals"]["anomalies"] == 1
    [found] = snap["recent_anomalies"]
    assert found["name"] == "pi-0a" and found["device_id"] == A
    assert (found["kind"], found["seq"]) == ("impossible", 5)
    assert set(found["sensor"].split(",")) == {"temp", "humidity"}  # one chip: one finding
    assert "failed sensor read" in found["detail"] or "outside" in found["detail"]
    json.dumps(snap, allow_nan=False)  # what /events sends: strict JSON


def test_snapshot_lists_the_newest_twenty_newest_first_with_names() -> None:
    ingest = Ingest(detector=InlineDetector(AnomalyEngine()))
    mon = fed_monitor(ingest=ingest)
    for n in range(25):
        ingest.anomalies.add(finding(n, B if n % 5 == 0 else A))
    ingest.anomalies.add(finding(99, "02:42:ac:11:00:99"))  # never heard, not in device-info
    snap = mon.snapshot()
    recent = snap["recent_anomalies"]
    assert [a["seq"] for a in recent] == [99, *range(24, 5, -1)]
    assert recent[0]["name"] == ""
    names = {a["device_id"]: a["name"] for a in recent[1:]}
    assert names == {A: "pi-0a", B: "pi-0b"}  # B's from the device-info file
    assert set(recent[1]) == {*Anomaly._fields, "name"}
    assert snap["totals"]["anomalies"] == 26
    rows = rows_by_id(snap)
    assert (rows[A]["anomalies"], rows[B]["anomalies"]) == (20, 5)
    body = TestClient(make_app(mon)).get("/api/devices").json()  # the JSON API has it too
    assert {d["id"]: d["anomalies"] for d in body["devices"]} == {A: 20, B: 5}
    assert body["recent_anomalies"] == recent and body["anomaly_detection"] is True


def test_api_anomalies_from_memory() -> None:
    ingest = Ingest(detector=InlineDetector(AnomalyEngine()))
    mon = fed_monitor(ingest=ingest)
    for n in range(150):
        ingest.anomalies.add(finding(n, B if n % 3 == 0 else A))
    with TestClient(make_app(mon)) as c:
        body = c.get("/api/anomalies").json()
        assert (body["device"], body["anomaly_detection"], body["store"]) == (None, True, False)
        seqs = [a["seq"] for a in body["anomalies"]]
        assert seqs == list(range(149, 49, -1))  # default limit 100, newest first
        top3 = c.get("/api/anomalies?limit=3").json()["anomalies"]
        assert [(a["seq"], a["name"]) for a in top3] == [(149, "pi-0a"), (148, "pi-0a"),
                                                         (147, "pi-0b")]  # fmt: skip
        assert len(c.get("/api/anomalies?limit=5000").json()["anomalies"]) == 150  # max 1000
        assert c.get("/api/anomalies?limit=0").json()["anomalies"] == []
        only_b = c.get(f"/api/anomalies?device={B.upper()}&limit=10").json()
        assert only_b["device"] == B
        assert [a["seq"] for a in only_b["anomalies"]] == list(range(147, 117, -3))
        assert {a["name"] for a in only_b["anomalies"]} == {"pi-0b"}
        response = c.get("/api/anomalies?limit=many")
        assert response.status_code == 400 and "limit" in response.json()["error"]


def test_api_anomalies_with_detection_off() -> None:
    with TestClient(make_app(fed_monitor())) as c:
        body = c.get(f"/api/anomalies?device={A}").json()
        assert body == {"device": A, "anomaly_detection": False, "store": False, "anomalies": []}


class ThreadCheckingStore:
    """A store wrapper that records whether its reads ran on an event loop's thread."""

    def __init__(self, store: TelemetryStore) -> None:
        self.store = store
        self.on_loop: list[bool] = []

    def _on_loop(self) -> bool:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True

    def recent(self, *args: Any) -> Any:
        self.on_loop.append(self._on_loop())
        return self.store.recent(*args)

    def read_anomalies(self, *args: Any) -> list[AnomalyRow]:
        self.on_loop.append(self._on_loop())
        return self.store.read_anomalies(*args)


def test_api_anomalies_merges_a_devices_stored_findings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'telemetry.db'}"
    ingest = Ingest(
        store=open_store(url, retention_days=None), detector=InlineDetector(AnomalyEngine())
    )
    web_store = ThreadCheckingStore(open_store(url, retention_days=None, create=False))
    history = StoreHistory(web_store)  # type: ignore[arg-type]  # duck-typed on purpose
    mon = fed_monitor(ingest=ingest, history=history)
    try:
        now = time.time()
        feed(mon, A, 5, now - 1, FAILED_READ)  # found now: in memory, and stored by the writer
        [live] = list(ingest.anomalies.recent)
        assert ingest.writer is not None and ingest.writer.close(10)  # committed
        earlier = [  # found before a restart: only in the store
            AnomalyRow(A, 2, now - 3600, "co,lpg,smoke", "drift", 0.01, 8.0, "co up"),
            AnomalyRow(A, 1, now - 7200, "*", "dropout", 40.0, 8.0, "silent for 40 s"),
            AnomalyRow(A, 0, now - 2 * 86400, "temp", "spike", 40.0, 11.0, "two days ago"),
            AnomalyRow(B, 3, now - 60, "humidity", "stuck", 50.0, 2.0, "another device"),
        ]
        assert ingest.store is not None
        ingest.store.write_anomalies(earlier)
        with TestClient(make_app(mon)) as c:
            body = c.get(f"/api/anomalies?device={A}").json()
            assert body["store"] is True and body["anomaly_detection"] is True
            found = body["anomalies"]
            # The live finding once (memory and store hold the same one), then the stored
            # ones of the last 24 h, newest first; B's and the two-day-old one are not there.
            assert [(a["seq"], a["kind"]) for a in found] == [
                (5, "impossible"),
                (2, "drift"),
                (1, "dropout"),
            ]
            assert found[0] == {**live.to_dict(), "name": "pi-0a"}
            assert found[1] == {
                "device_id": A, "sensor": "co,lpg,smoke", "kind": "drift", "seq": 2,
                "ts": now - 3600, "value": 0.01, "score": 8.0, "detail": "co up", "name": "pi-0a",
            }  # fmt: skip
            two = c.get(f"/api/anomalies?device={A}&limit=2").json()["anomalies"]
            assert [a["seq"] for a in two] == [5, 2]
            # Without a device: the in-memory log only, no database query.
            reads = len(web_store.on_loop)
            assert [a["seq"] for a in c.get("/api/anomalies").json()["anomalies"]] == [5]
            assert len(web_store.on_loop) == reads
            # The charts' history reads the store too; both off the event loop.
            series = c.get(f"/api/devices/{A}/history?minutes=5").json()["series"]
            assert series["temp"][-1] == 0.0
            assert web_store.on_loop and not any(web_store.on_loop)
    finally:
        ingest.close(5)
        web_store.store.close()


def test_api_anomalies_survives_a_store_that_fails() -> None:
    class Broken:
        def recent(self, *args: Any) -> Any:
            raise OSError("database is down")

        def read_anomalies(self, *args: Any) -> list[AnomalyRow]:
            raise OSError("database is down")

    ingest = Ingest(detector=InlineDetector(AnomalyEngine()))
    mon = fed_monitor(ingest=ingest, history=StoreHistory(Broken()))  # type: ignore[arg-type]
    ingest.anomalies.add(finding(1))
    with TestClient(make_app(mon)) as c:
        body = c.get(f"/api/anomalies?device={A}").json()
    assert [a["seq"] for a in body["anomalies"]] == [1]
    assert body["store_error"] == "OSError: database is down"


def test_page_has_the_anomaly_column_panel_and_markers(client: TestClient) -> None:
    page = client.get("/").text
    for element in ('id="total-anomalies"', 'id="anomalies-panel"', 'id="anomaly-rows"',
                    'id="device-anomalies"', "anomaly detection off"):  # fmt: skip
        assert element in page, element
    script = client.get("/static/app.js").text
    for used in ("/api/anomalies?device=", "recent_anomalies", "anomaly_detection",
                 'label: "Anomalies"', "at.anomalies"):  # fmt: skip
        assert used in script, used
