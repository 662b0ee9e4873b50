"""Consumer configuration: CLI flag > environment > default."""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn, Optional, TypeVar

from edge_agent.config import (
    LOG_LEVELS,
    ConfigError,
    parse_port,
    parse_positive_float,
    parse_positive_int,
    parse_topic_prefix,
)
from edge_agent.protocol import MAC_RE, STATUS_PREFIX, TELEMETRY_PREFIX

PROG = "edge-consumer"
FORMATS = ("pretty", "json", "none")
T = TypeVar("T")


@dataclass(frozen=True)
class ConsumerConfig:
    host: str = "localhost"
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

    @property
    def fleet_check(self) -> bool:
        return self.expect is not None or self.expect_ids is not None


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
    conn.add_argument("--host", help="broker host (env MQTT_BROKER, default localhost)")
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
    return p


def load_config(argv: Optional[Sequence[str]], env: Mapping[str, str]) -> ConsumerConfig:
    """Parse flags and environment into a ConsumerConfig, or raise ConfigError."""
    args = build_parser().parse_args(argv)

    def pick(flag: Optional[str], env_name: str) -> Optional[str]:
        if flag is not None:
            return flag
        value = env.get(env_name)
        return value if value else None

    host = pick(args.host, "MQTT_BROKER") or "localhost"
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
        host=host,
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
    )
