"""edge-consumer: subscribe, validate, account; optionally wait for the fleet to report.

Exit codes: 0 ok (or fleet check met), 1 fleet check not met or runtime failure, 2 usage.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from edge_agent.config import ConfigError

from .accounting import Accounting
from .config import PROG, ConsumerConfig, load_config
from .dropouts import DropoutJudge
from .fleetcheck import CheckResult, evaluate
from .ingest import Ingest
from .monitor import BrokerStats
from .output import make_emitters
from .subscriber import Subscriber
from .summary import build_summary, print_summary

TICK_S = 0.1  # main-loop period: stop conditions and the fleet check are polled this often
DRAIN_S = 10.0  # at shutdown, queued readings get this long to be committed and acknowledged


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


def _write_json(path: str, data: dict[str, Any]) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def _missing_monitor_modules() -> str:
    names = ("prometheus_client", "starlette", "uvicorn")
    return ", ".join(n for n in names if importlib.util.find_spec(n) is None)


def make_ingest(config: ConsumerConfig) -> Optional[Ingest]:
    """The store and anomaly detector the config asks for; raises StoreError (or RuntimeError
    for a missing extra) with a message for people. Call it before any thread starts: the
    detector's process is forked."""
    if not config.store and not config.anomalies:
        return None
    from .anomaly.worker import DetectorProcess
    from .store import open_store

    detector = DetectorProcess() if config.anomalies else None
    try:
        store = (
            open_store(config.store, retention_days=config.retention_days) if config.store else None
        )
    except BaseException:
        if detector is not None:
            detector.close()
        raise
    return Ingest(store=store, detector=detector, anomaly_prefix=config.anomaly_prefix)


def run(config: ConsumerConfig) -> int:
    acc = Accounting(config.topic_prefix, config.status_prefix, config.max_payload)
    emit, emit_status = make_emitters(config.format, sys.stdout)
    broker = BrokerStats() if config.http_port else None
    from .store import StoreError

    try:
        ingest = make_ingest(config)
    except StoreError as e:
        _error(f"--store: {e}")
        return 2
    except Exception as e:  # e.g. the database is unreachable at start-up
        _error(f"cannot open the telemetry store: {type(e).__name__}: {e}".strip())
        return 1
    sub = Subscriber(
        config, acc, emit, emit_status, on_sys=broker.on_sys if broker else None, ingest=ingest
    )
    if ingest is not None and config.anomalies:
        client = sub.client
        ingest.publish = lambda topic, payload: client.publish(topic, payload, qos=1)
        # A device the fleet no longer lists (scaled down) is not a dropout when it stops.
        listed = config.device_info
        ingest.judge = DropoutJudge(
            acc.devices, fleet=(lambda device_id: device_id in listed) if listed else None
        )
    stop = threading.Event()
    stop_reason = ""

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop_reason
        stop_reason = signal.Signals(signum).name
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    web: Any = None
    if broker is not None:
        from .web import serve  # the monitor extra: imported only when it is used

        web = serve(config, acc, broker, sub.connected.is_set, ingest)

    started = time.monotonic()
    deadline = started + config.duration if config.duration else None
    check_deadline = started + config.timeout if config.timeout else None
    check: Optional[CheckResult] = None

    def check_now() -> Optional[CheckResult]:
        if not config.fleet_check:
            return None
        return evaluate(acc.snapshot(), config.min_messages, config.expect, config.expect_ids)

    live_ctx: Any = contextlib.nullcontext(lambda: None)
    if config.live:
        from .live import LiveView

        live_ctx = LiveView(acc, started)

    sub.start()
    try:
        with live_ctx as tick:
            while not stop.is_set():
                sub.wake.wait(TICK_S)
                tick()
                if ingest is not None:
                    ingest.tick(time.time(), sub.connected.is_set())
                if sub.fatal or sub.output_closed:
                    stop_reason = "output closed" if sub.output_closed else "broker refused"
                    break
                now = time.monotonic()
                check = check_now()
                if check is not None and check.met:
                    stop_reason = "fleet check met"
                    break
                if deadline is not None and now >= deadline:
                    stop_reason = "duration"
                    break
                if check_deadline is not None and now >= check_deadline:
                    stop_reason = "timeout"
                    break
    finally:
        if ingest is not None:  # commit and acknowledge what is queued while still connected
            ingest.close(DRAIN_S)
        sub.stop()
        if web is not None:
            web.stop()
        sys.stdout.flush()
    elapsed = time.monotonic() - started
    logging.getLogger("edge_consumer").info("stopped: %s after %.1f s", stop_reason, elapsed)

    check = check_now()
    summary = build_summary(acc, elapsed)
    # CPU seconds of the whole process: msg per CPU-second is comparable across busy machines.
    summary["totals"]["cpu_s"] = round(time.process_time(), 3)
    summary["totals"]["consumer_connects"] = sub.connects
    if check is not None:
        summary["fleet_check"] = {
            "met": check.met,
            "ready": check.ready,
            "wanted": check.wanted,
            "min_messages": config.min_messages,
            "missing": list(check.missing),
            "too_little": [list(t) for t in check.too_little],
            "unexpected": list(check.unexpected),
        }
    if config.summary:
        print_summary(summary, sys.stdout)
    if config.summary_json:
        _write_json(config.summary_json, summary)

    if sub.fatal:
        _error(sub.fatal)
        return 1
    if sub.connects == 0:
        _error(f"never connected to {config.broker}:{config.port} in {elapsed:.0f} s")
        if check is None:
            return 1
    if check is not None:
        if check.met:
            print(
                f"{PROG}: fleet check met: {check.ready} of {check.wanted} devices sent"
                f" >= {config.min_messages} valid messages in {elapsed:.1f} s",
                file=sys.stderr,
            )
            for line in check.note_lines():
                print(f"{PROG}: {line}", file=sys.stderr)
            return 0
        for line in check.failure_lines(config.min_messages):
            print(f"{PROG}: {line}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        config = load_config(argv, os.environ)
    except ConfigError as exc:
        _error(str(exc))
        return 2
    if config.http_port and (missing := _missing_monitor_modules()):
        _error(
            f"--http-port needs the monitor extra (pip install 'edge-fleet[monitor]'): {missing}"
        )
        return 2
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return run(config)
    except BrokenPipeError:  # `edge-consumer | head`: not an error
        with contextlib.suppress(OSError):  # silence the exit-time flush (Python docs recipe)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        _error(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
