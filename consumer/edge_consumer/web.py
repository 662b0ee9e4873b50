"""The monitor's HTTP side: dashboard, server-sent events, JSON API and /metrics on one port.

A Starlette app served by uvicorn in a background thread of the consumer. One timer on the
server's event loop samples the rates every second and, while a dashboard is open, encodes one
fleet snapshot that every /events client shares: the cost does not grow with the viewers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .accounting import Accounting
from .config import ConsumerConfig
from .history import SAMPLE_EVERY, History, RingHistory, StoreHistory
from .ingest import Ingest
from .monitor import ROW_COLUMNS, BrokerStats, Monitor
from .store import AnomalyRow, TelemetryStore

log = logging.getLogger("edge_consumer.web")

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
TICK_S = 1.0  # snapshot period: updates reach the browser within ~1 s
PING_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
HISTORY_MINUTES = 10.0
ANOMALY_LIMIT = 100  # /api/anomalies: findings per request by default,
ANOMALY_LIMIT_MAX = 1000  # and at most
STORED_ANOMALIES_S = 24 * 3600.0  # a device's stored findings of the last day are merged in
NO_CACHE = {"Cache-Control": "no-store"}


def _static_files() -> dict[str, tuple[bytes, str]]:
    """static/* read once, through importlib.resources: the service runs from a zipapp, where
    the package directory is not a real directory (StaticFiles could not serve it)."""
    files: dict[str, tuple[bytes, str]] = {}
    for entry in resources.files("edge_consumer").joinpath("static").iterdir():
        if entry.is_file():
            suffix = "." + entry.name.rpartition(".")[2]
            files[entry.name] = (entry.read_bytes(), MEDIA_TYPES.get(suffix, "text/plain"))
    return files


class BasicAuth:
    """ASGI middleware: every HTTP request needs these Basic credentials."""

    def __init__(self, app: ASGIApp, user: str, password: str, realm: str = "edge-fleet") -> None:
        self.app = app
        self._user = user.encode()
        self._password = password.encode()
        self._challenge = f'Basic realm="{realm}", charset="UTF-8"'

    def _allowed(self, scope: Scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        # Both comparisons always run: no early exit that would time the user name.
        user_ok = hmac.compare_digest(user, self._user)
        password_ok = hmac.compare_digest(password, self._password)
        return bool(sep) and user_ok and password_ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = Response(
            "authentication required\n",
            status_code=401,
            headers={"WWW-Authenticate": self._challenge},
            media_type="text/plain",
        )
        await response(scope, receive, send)


class Broadcaster:
    """The latest encoded snapshot and a wake-up for the /events streams (event loop only)."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.clients = 0
        self.closed = False
        self.data = b""
        self.version = 0  # of data; a stream sends each version once
        self._changed = asyncio.Event()

    def publish(self) -> None:
        self.data = json.dumps(self.monitor.snapshot(), separators=(",", ":")).encode()
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def wait(self, seen: int, timeout: float) -> bool:
        """True once a snapshot newer than version `seen` is there, False on timeout."""
        if self.version != seen:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def run(self) -> None:
        while not self.closed:
            self.monitor.tick()
            if self.clients:
                self.publish()
            await asyncio.sleep(TICK_S)


def create_app(
    monitor: Monitor,
    registry: CollectorRegistry,
    *,
    chartjs: Optional[str] = None,
    auth: Optional[tuple[str, str]] = None,
) -> Starlette:
    """The whole HTTP surface. With `auth`, every route (static files too) needs it."""
    broadcaster: Optional[Broadcaster] = None

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal broadcaster
        broadcaster = Broadcaster(monitor)
        app.state.broadcaster = broadcaster
        app.state.loop = asyncio.get_running_loop()
        task = asyncio.create_task(broadcaster.run())
        try:
            yield
        finally:
            broadcaster.close()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    static = _static_files()

    async def index(_: Request) -> Response:
        body, media_type = static["index.html"]
        return Response(body, media_type=media_type, headers=NO_CACHE)

    async def static_file(request: Request) -> Response:
        found = static.get(request.path_params["name"])
        if found is None:
            return Response("not found\n", status_code=404, media_type="text/plain")
        return Response(found[0], media_type=found[1], headers=NO_CACHE)

    async def chart_js(_: Request) -> Response:
        if chartjs and Path(chartjs).is_file():
            return FileResponse(chartjs, media_type="text/javascript")
        # Still valid JS: the page shows a note in place of the charts instead of failing.
        missing = json.dumps(str(chartjs or ""))
        body = f"window.EDGE_CHARTJS_MISSING = {missing};\n"
        return Response(body, media_type="text/javascript", headers=NO_CACHE)

    async def events(_: Request) -> Response:
        b = broadcaster
        assert b is not None, "lifespan not started"

        async def stream() -> AsyncIterator[bytes]:
            b.clients += 1
            try:
                if not b.data:
                    b.publish()
                seen = b.version
                yield b"retry: 2000\n\ndata: " + b.data + b"\n\n"
                while not b.closed:
                    if not await b.wait(seen, PING_S):
                        yield b": ping\n\n"
                    elif not b.closed:
                        seen = b.version
                        yield b"data: " + b.data + b"\n\n"
            finally:
                b.clients -= 1

        headers = {**NO_CACHE, "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    async def devices(_: Request) -> Response:
        snap = monitor.snapshot()
        snap["devices"] = [dict(zip(ROW_COLUMNS, row)) for row in snap.pop("devices")]
        del snap["columns"]
        return JSONResponse(snap, headers=NO_CACHE)

    async def history(request: Request) -> Response:
        device_id = request.path_params["device_id"].lower()
        try:
            minutes = float(request.query_params.get("minutes", HISTORY_MINUTES))
        except ValueError:
            return JSONResponse({"error": "minutes must be a number"}, status_code=400)
        minutes = min(max(minutes, 0.0), 24 * 60.0)
        now = monitor.clock()
        # With a store this is a database query: off the event loop, so /events keeps its beat.
        series = await run_in_threadpool(monitor.history.recent, device_id, now - minutes * 60.0)
        if series is None:
            return JSONResponse({"error": f"no history for {device_id}"}, status_code=404)
        body = {"device_id": device_id, "now": now, "series": series}
        return JSONResponse(body, headers=NO_CACHE)

    async def anomalies(request: Request) -> Response:
        device = request.query_params.get("device", "").strip().lower() or None
        try:
            limit = int(request.query_params.get("limit", ANOMALY_LIMIT))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, status_code=400)
        limit = min(max(limit, 0), ANOMALY_LIMIT_MAX)
        found = monitor.recent_anomalies(limit if device is None else ANOMALY_LIMIT_MAX, device)
        body: dict[str, Any] = {
            "device": device,
            "anomaly_detection": monitor.anomaly_detection,
            "store": monitor.has_store,
        }
        store = _anomaly_store(monitor)
        if device is not None and store is not None:
            now = monitor.clock()
            try:
                stored = await run_in_threadpool(
                    store.read_anomalies, device, now - STORED_ANOMALIES_S, now + 60.0
                )
            except Exception as e:  # the database is down: the in-memory log still answers
                log.warning("cannot read the stored anomalies of %s: %s", device, e)
                body["store_error"] = f"{type(e).__name__}: {e}"
            else:
                found = _merge(found, stored, monitor.display_name(device))
        found.sort(key=lambda a: a["ts"], reverse=True)  # stable: ties keep newest-found first
        body["anomalies"] = found[:limit]
        return JSONResponse(body, headers=NO_CACHE)

    async def metrics(_: Request) -> Response:
        # ~0.1-0.3 s at 1,000 devices: off the event loop, so /events keeps its beat.
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        body = {"ok": True, "connected": monitor.connected(), "broker_up": monitor.broker_up()}
        return JSONResponse(body, headers=NO_CACHE)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/vendor/chart.js", chart_js),
            Route("/events", events),
            Route("/api/devices", devices),
            Route("/api/devices/{device_id}/history", history),
            Route("/api/anomalies", anomalies),
            Route("/metrics", metrics),
            Route("/healthz", healthz),
            Route("/static/{name}", static_file),
        ],
        lifespan=lifespan,
    )
    if auth is not None:
        app.add_middleware(BasicAuth, user=auth[0], password=auth[1])
    return app


def _anomaly_store(monitor: Monitor) -> Optional[TelemetryStore]:
    """The store to read findings from: the web side's own connection (StoreHistory's) when
    there is one, so reads never wait behind the writer's batches; else the writer's."""
    if isinstance(monitor.history, StoreHistory):
        return monitor.history.store
    ingest = monitor.ingest
    return ingest.store if ingest is not None else None


def _merge(
    found: list[dict[str, Any]], stored: list[AnomalyRow], name: str
) -> list[dict[str, Any]]:
    """One device's findings in memory plus those in the store, each (seq, sensor, kind) once
    (the in-memory copy wins: it is the same finding)."""
    seen = {(a["seq"], a["sensor"], a["kind"]) for a in found}
    out = list(found)
    for row in stored:
        key = (row.seq, row.sensor, row.kind)
        if key in seen:
            continue
        seen.add(key)
        out.append(
            {
                "device_id": row.device_id,
                "sensor": row.sensor,
                "kind": row.kind,
                "seq": row.seq,
                "ts": row.ts,
                "value": row.value,
                "score": row.score,
                "detail": row.detail,
                "name": name,
            }
        )
    return out


class WebServer:
    """uvicorn in a daemon thread; the socket is bound by the caller's thread so that a port
    in use fails at start-up with a clear error instead of inside the thread."""

    def __init__(self, app: Starlette, bind: str, port: int) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((bind, port))
        except OSError as exc:
            self.sock.close()
            raise OSError(f"cannot serve HTTP on {bind}:{port}: {exc.strerror or exc}") from None
        self.app = app
        self.address = self.sock.getsockname()[:2]
        config = uvicorn.Config(
            app,
            loop="asyncio",
            http="h11",
            lifespan="on",
            access_log=False,
            log_config=None,  # keep the consumer's logging set-up
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="edge-web", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException:  # SystemExit from uvicorn included: log it, never hang the caller
            log.exception("the HTTP server stopped")

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            raise OSError(f"the HTTP server did not start on {self.address[0]}:{self.address[1]}")
        log.info("serving the dashboard and /metrics on http://%s:%d/", *self.address)

    def stop(self, timeout: float = 5.0) -> None:
        """Ends the /events streams, then uvicorn; returns within about `timeout` seconds."""
        loop: Any = getattr(self.app.state, "loop", None)
        b: Any = getattr(self.app.state, "broadcaster", None)
        if loop is not None and b is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(b.close)
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(1.0)
        self.sock.close()


def serve(
    config: ConsumerConfig,
    acc: Accounting,
    broker: BrokerStats,
    connected: Callable[[], bool],
    ingest: Optional[Ingest] = None,
) -> WebServer:
    """Wire history, metrics and the app to `acc` and start serving; raises OSError (and
    StoreError or a database error when the store cannot be opened for reading)."""
    from .metrics import build_registry

    history: History
    if config.store:  # charts from the store; ingest opened (and created) it already
        from .store import open_store

        history = StoreHistory(open_store(config.store, retention_days=None, create=False))
    else:
        rings = RingHistory()
        acc.record_every = SAMPLE_EVERY
        acc.recorder = rings.record
        history = rings
    monitor = Monitor(
        acc,
        history,
        offline_after=config.offline_after,
        device_info=config.device_info,
        connected=connected,
        broker=broker,
        ingest=ingest,
    )
    app = create_app(
        monitor, build_registry(monitor), chartjs=config.chartjs, auth=config.http_auth
    )
    server = WebServer(app, config.http_bind, config.http_port)
    server.start()
    return server
