"""Consumer configuration: CLI flag > environment > default."""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, NoReturn, Optional, TypeVar

from edge_agent.config import (
    LOG_LEVELS,
    ConfigError,
    parse_port,
    parse_positive_float,
    parse_positive_int,
    parse_topic_prefix,
)
from edge_agent.protocol import ANOMALY_PREFIX, MAC_RE, STATUS_PREFIX, TELEMETRY_PREFIX

from .monitor import OFFLINE_AFTER, DeviceInfo, read_device_info
from .store.base import DEFAULT_RETENTION_DAYS

PROG = "edge-consumer"
FORMATS = ("pretty", "json", "none")
CHARTJS = "/usr/share/javascript/chart.js/chart.min.js"  # Debian's libjs-chart.js
HTTP_PASSWORD_ENV = "EDGE_CONSUMER_HTTP_PASSWORD"  # never a flag: argv is world-readable
T = TypeVar("T")


@dataclass(frozen=True)
class ConsumerConfig:
    broker: str = "localhost"
    port: int = 1883
    username: Optional[str] = None
    password: Optional[str] = None
    tls_ca: Optional[str] = None
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    client_id: str = "edge-consumer"
    persistent: bool = False
    topic_prefix: str = TELEMETRY_PREFIX
    status_prefix: str = STATUS_PREFIX
    max_payload: int = 4096
    format: str = "pretty"
    live: bool = False
    summary: bool = False
    summary_json: Optional[str] = None
    duration: Optional[float] = None
    expect: Optional[int] = None
    expect_ids: Optional[tuple[str, ...]] = None
    min_messages: int = 1
    timeout: Optional[float] = None
    log_level: str = "WARNING"
    # The monitor service: /metrics and the dashboard (http_port 0: no server).
    http_bind: str = "127.0.0.1"
    http_port: int = 0
    http_user: Optional[str] = None
    http_password: Optional[str] = field(default=None, repr=False)
    chartjs: str = CHARTJS
    device_info: Optional[dict[str, DeviceInfo]] = field(default=None, compare=False)
    offline_after: float = OFFLINE_AFTER
    # The telemetry store (None: readings are counted, not kept) and anomaly detection.
    store: Optional[str] = field(default=None, repr=False)  # a URL may hold a password
    retention_days: Optional[int] = DEFAULT_RETENTION_DAYS
    anomalies: bool = False
    anomaly_prefix: str = ANOMALY_PREFIX

    @property
    def fleet_check(self) -> bool:
        return self.expect is not None or self.expect_ids is not None

    @property
    def http_auth(self) -> Optional[tuple[str, str]]:
        """Basic-auth credentials every route requires, or None (loopback without them)."""
        if self.http_user and self.http_password:
            return self.http_user, self.http_password
        return None


# --- value parsers: each raises ValueError with a short reason -------------------------


def _readable_file(value: str) -> str:
    if not Path(value).is_file():
        raise ValueError(f"{value!r} is not a readable file")
    return value


def read_expect_ids(path: str) -> tuple[str, ...]:
    """One MAC per line; blank lines and '#' comments are ignored; duplicates collapse."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path!r}: {exc}") from None
    ids: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), 1):
        mac = line.split("#", 1)[0].strip().lower().replace("-", ":")
        if not mac:
            continue
        if not MAC_RE.match(mac):
            raise ValueError(f"{path}:{number}: {mac!r} is not a MAC address like aa:bb:..")
        ids[mac] = None
    if not ids:
        raise ValueError(f"{path!r} lists no device IDs")
    return tuple(ids)


def read_password_file(path: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path!r}: {exc}") from None
    if not lines or not lines[0]:
        raise ValueError(f"{path!r} is empty")
    return lines[0]


class HttpSettings(NamedTuple):
    http_bind: str
    http_port: int
    http_user: Optional[str]
    http_password: Optional[str]
    chartjs: str
    device_info: Optional[dict[str, DeviceInfo]]
    offline_after: float


def is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def parse_retention_days(value: str) -> Optional[int]:
    """Whole days >= 1, or 0 to keep everything."""
    days = int(value) if value.strip().isdigit() else -1
    if days < 0:
        raise ValueError(f"{value!r} is not a whole number of days (0 keeps everything)")
    return days or None


def parse_switch(value: str) -> bool:
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not one of 1/0, true/false, yes/no, on/off")


def parse_http_port(value: str) -> int:
    return 0 if value.strip() == "0" else parse_port(value)


def parse(setting: str, raw: str, parser: Callable[[str], T]) -> T:
    try:
        return parser(raw)
    except ValueError as exc:
        raise ConfigError(setting, str(exc)) from None


# --- argument parsing -------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line instead of argparse's usage block: Ansible shows stderr verbatim.
        raise ConfigError("", message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Subscribe to fleet telemetry, validate and account for every message.",
    )
    conn = p.add_argument_group("broker (flags override MQTT_* environment variables)")
    conn.add_argument("--broker", help="broker host (env MQTT_BROKER, default localhost)")
    conn.add_argument("--port", help="broker port (env MQTT_PORT, default 1883)")
    conn.add_argument("--username", help="env MQTT_USERNAME")
    conn.add_argument("--password-file", help="first line is the password (env MQTT_PASSWORD)")
    conn.add_argument("--tls-ca", help="CA bundle; enables TLS (env MQTT_TLS_CA)")
    conn.add_argument("--tls-cert", help="client certificate (env MQTT_TLS_CERT)")
    conn.add_argument("--tls-key", help="client key (env MQTT_TLS_KEY)")
    conn.add_argument("--client-id", help="default edge-consumer-<random>")
    conn.add_argument(
        "--persistent",
        action="store_true",
        help="keep the session (and queued QoS1 messages) for 3600 s; needs --client-id",
    )
    sub = p.add_argument_group("topics and validation")
    sub.add_argument("--topic-prefix", default=TELEMETRY_PREFIX)
    sub.add_argument("--status-prefix", default=STATUS_PREFIX)
    sub.add_argument("--max-payload", default="4096", help="bytes; larger payloads are invalid")
    out = p.add_argument_group("output")
    out.add_argument("--format", choices=FORMATS, help="per-message output (default pretty)")
    out.add_argument("--live", action="store_true", help="live per-device table (rich)")
    out.add_argument("--summary", action="store_true", help="print a per-device summary at exit")
    out.add_argument("--summary-json", metavar="PATH", help="write the summary as JSON at exit")
    out.add_argument("--log-level", default="WARNING", type=str.upper, choices=LOG_LEVELS)
    run = p.add_argument_group("stopping and fleet check")
    run.add_argument("--duration", help="stop after S seconds")
    run.add_argument("--expect", help="succeed once N distinct devices sent --min-messages")
    run.add_argument("--expect-ids", metavar="FILE", help="MACs (one per line) that must report")
    run.add_argument("--min-messages", default="1", help="valid messages per device (default 1)")
    run.add_argument("--timeout", help="fleet check gives up after S seconds (exit 1)")
    web = p.add_argument_group(
        "monitor service: Prometheus /metrics and the web dashboard",
        f"Off unless --http-port is given. Bound to a non-loopback address, every route needs"
        f" HTTP Basic auth: --http-user and the password in {HTTP_PASSWORD_ENV} (when given,"
        f" they are required on loopback too). A device is online while its retained status"
        f" is online and it was heard within --offline-after seconds.",
    )
    web.add_argument("--http-bind", help="address (env EDGE_CONSUMER_HTTP_BIND, default 127.0.0.1)")
    web.add_argument("--http-port", help="port, 0 = off (env EDGE_CONSUMER_HTTP_PORT, default 0)")
    web.add_argument("--http-user", help="basic-auth user (env EDGE_CONSUMER_HTTP_USER)")
    web.add_argument(
        "--chartjs",
        metavar="PATH",
        help=f"Chart.js for the charts (env EDGE_CONSUMER_CHARTJS, default {CHARTJS})",
    )
    web.add_argument(
        "--device-info",
        metavar="FILE",
        help="JSON {device_id: {name, arch, host}} (env EDGE_CONSUMER_DEVICE_INFO)",
    )
    web.add_argument(
        "--offline-after",
        metavar="S",
        help=f"a device silent this long is offline (env EDGE_CONSUMER_OFFLINE_AFTER, default"
        f" {OFFLINE_AFTER:g} = 3 x the agent's 5 s interval)",
    )
    keep = p.add_argument_group(
        "telemetry store and anomaly detection",
        "With a store, a QoS 1 message is acknowledged only once the batch holding its reading"
        " is committed, and readings are stored once per (device, epoch, seq): with"
        " --persistent, a consumer or database that dies mid-flood loses nothing.",
    )
    keep.add_argument(
        "--store",
        metavar="URL",
        help="sqlite:///path/telemetry.db or postgresql://user@host/db (env"
        " EDGE_CONSUMER_STORE; a PostgreSQL password comes from PGPASSWORD or ~/.pgpass)",
    )
    keep.add_argument(
        "--retention-days",
        metavar="DAYS",
        help=f"drop stored data older than this, 0 keeps all (env"
        f" EDGE_CONSUMER_RETENTION_DAYS, default {DEFAULT_RETENTION_DAYS})",
    )
    keep.add_argument(
        "--anomalies",
        action="store_true",
        default=None,
        help="run the anomaly detectors on every valid reading and publish what they find to"
        f" {ANOMALY_PREFIX}/<device_id> (env EDGE_CONSUMER_ANOMALIES=1)",
    )
    return p


def _http_settings(
    args: argparse.Namespace,
    pick: Callable[[Optional[str], str], Optional[str]],
    env: Mapping[str, str],
) -> HttpSettings:
    """The monitor service's settings; starting it unprotected off loopback is a usage error."""
    bind = pick(args.http_bind, "EDGE_CONSUMER_HTTP_BIND") or "127.0.0.1"
    port_raw = pick(args.http_port, "EDGE_CONSUMER_HTTP_PORT")
    port_setting = "--http-port" if args.http_port else "EDGE_CONSUMER_HTTP_PORT"
    port = parse(port_setting, port_raw, parse_http_port) if port_raw else 0
    user = pick(args.http_user, "EDGE_CONSUMER_HTTP_USER")
    password = env.get(HTTP_PASSWORD_ENV) or None
    offline_raw = pick(args.offline_after, "EDGE_CONSUMER_OFFLINE_AFTER")
    offline_setting = "--offline-after" if args.offline_after else "EDGE_CONSUMER_OFFLINE_AFTER"
    info_path = pick(args.device_info, "EDGE_CONSUMER_DEVICE_INFO")
    info_setting = "--device-info" if args.device_info else "EDGE_CONSUMER_DEVICE_INFO"
    if port:
        if not is_loopback(bind) and not (user and password):
            raise ConfigError(
                "--http-bind",
                f"{bind} is not a loopback address: serving metrics and the dashboard there"
                f" needs HTTP Basic auth; give --http-user and the password in {HTTP_PASSWORD_ENV}",
            )
        if bool(user) != bool(password):
            raise ConfigError(
                "--http-user",
                f"--http-user and {HTTP_PASSWORD_ENV} must be given together",
            )
    return HttpSettings(
        http_bind=bind,
        http_port=port,
        http_user=user,
        http_password=password,
        chartjs=pick(args.chartjs, "EDGE_CONSUMER_CHARTJS") or CHARTJS,
        device_info=parse(info_setting, info_path, read_device_info) if info_path else None,
        offline_after=parse(offline_setting, offline_raw, parse_positive_float)
        if offline_raw
        else OFFLINE_AFTER,
    )


def load_config(argv: Optional[Sequence[str]], env: Mapping[str, str]) -> ConsumerConfig:
    """Parse flags and environment into a ConsumerConfig, or raise ConfigError."""
    args = build_parser().parse_args(argv)

    def pick(flag: Optional[str], env_name: str) -> Optional[str]:
        if flag is not None:
            return flag
        value = env.get(env_name)
        return value if value else None

    broker = pick(args.broker, "MQTT_BROKER") or "localhost"
    port_raw = pick(args.port, "MQTT_PORT")
    port = parse("--port" if args.port else "MQTT_PORT", port_raw, parse_port) if port_raw else 1883

    password: Optional[str]
    if args.password_file is not None:
        password = parse("--password-file", args.password_file, read_password_file)
    else:
        password = env.get("MQTT_PASSWORD") or None
    tls_ca = pick(args.tls_ca, "MQTT_TLS_CA")
    tls_cert = pick(args.tls_cert, "MQTT_TLS_CERT")
    tls_key = pick(args.tls_key, "MQTT_TLS_KEY")
    for setting, value in (("tls-ca", tls_ca), ("tls-cert", tls_cert), ("tls-key", tls_key)):
        if value is not None:
            parse(f"--{setting}", value, _readable_file)
    if (tls_cert or tls_key) and not tls_ca:
        raise ConfigError("--tls-ca", "required when a client certificate or key is given")
    if bool(tls_cert) != bool(tls_key):
        raise ConfigError("--tls-cert", "--tls-cert and --tls-key must be given together")

    if args.persistent and not args.client_id:
        raise ConfigError("--persistent", "needs a fixed --client-id to resume the session")
    if args.client_id is not None and not args.client_id.strip():
        raise ConfigError("--client-id", "must not be empty")
    client_id = args.client_id or f"{PROG}-{secrets.token_hex(4)}"

    live = bool(args.live)
    fmt = args.format or ("none" if live else "pretty")
    if live and fmt != "none":
        raise ConfigError("--live", f"cannot be combined with --format {fmt}")
    if live and not sys.stdout.isatty():
        raise ConfigError("--live", "needs a terminal; use --summary when output is captured")

    expect = parse("--expect", args.expect, parse_positive_int) if args.expect else None
    expect_ids = (
        (parse("--expect-ids", args.expect_ids, read_expect_ids)) if args.expect_ids else None
    )
    if expect is not None and expect_ids is not None:
        raise ConfigError("--expect", "use either --expect or --expect-ids, not both")
    timeout = parse("--timeout", args.timeout, parse_positive_float) if args.timeout else None
    if timeout is not None and expect is None and expect_ids is None:
        raise ConfigError("--timeout", "only applies to a fleet check (--expect/--expect-ids)")

    return ConsumerConfig(
        broker=broker,
        port=port,
        username=pick(args.username, "MQTT_USERNAME"),
        password=password,
        tls_ca=tls_ca,
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_id=client_id,
        persistent=bool(args.persistent),
        topic_prefix=parse("--topic-prefix", args.topic_prefix, parse_topic_prefix),
        status_prefix=parse("--status-prefix", args.status_prefix, parse_topic_prefix),
        max_payload=parse("--max-payload", args.max_payload, parse_positive_int),
        format=fmt,
        live=live,
        summary=bool(args.summary),
        summary_json=args.summary_json,
        duration=parse("--duration", args.duration, parse_positive_float)
        if args.duration
        else None,
        expect=expect,
        expect_ids=expect_ids,
        min_messages=parse("--min-messages", args.min_messages, parse_positive_int),
        timeout=timeout,
        log_level=args.log_level,
        **_http_settings(args, pick, env)._asdict(),
        **_keep_settings(args, pick)._asdict(),
    )


class KeepSettings(NamedTuple):
    store: Optional[str]
    retention_days: Optional[int]
    anomalies: bool


def _keep_settings(
    args: argparse.Namespace, pick: Callable[[Optional[str], str], Optional[str]]
) -> KeepSettings:
    store = pick(args.store, "EDGE_CONSUMER_STORE")
    if store is not None and not store.strip():
        raise ConfigError("--store", "must not be empty")
    days_raw = pick(args.retention_days, "EDGE_CONSUMER_RETENTION_DAYS")
    days_setting = "--retention-days" if args.retention_days else "EDGE_CONSUMER_RETENTION_DAYS"
    anomalies_raw = pick(None, "EDGE_CONSUMER_ANOMALIES")
    anomalies = bool(args.anomalies) or (
        parse("EDGE_CONSUMER_ANOMALIES", anomalies_raw, parse_switch) if anomalies_raw else False
    )
    return KeepSettings(
        store=store,
        retention_days=parse(days_setting, days_raw, parse_retention_days)
        if days_raw
        else DEFAULT_RETENTION_DAYS,
        anomalies=anomalies,
    )
