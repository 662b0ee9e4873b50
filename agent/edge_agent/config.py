"""Agent configuration: CLI flag > environment > JSON config file > default.

No dataclasses (it imports inspect: ~1.1 MB of heap per agent) and argparse only when the
command line needs it (~0.4 MB): see _parse_simple.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Optional

from .protocol import MAC_RE, STATUS_PREFIX, TELEMETRY_PREFIX, status_topic, telemetry_topic

if TYPE_CHECKING:
    import argparse

    from .faults import FaultSpec

PROG = "edge-agent"
# Shared with the consumer (and its --log-level choices).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(Exception):
    """A configuration or data problem; the CLI prints it on one line and exits 2.

    Shared with the consumer, whose argparse errors have no setting (empty)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}" if setting else message)
        self.setting = setting
        self.message = message


class AgentConfig(NamedTuple):
    device_name: str
    device_id: str
    broker: str
    port: int
    username: Optional[str]
    password: Optional[str]
    tls_ca: Optional[str]
    tls_cert: Optional[str]
    tls_key: Optional[str]
    client_id: str
    topic_prefix: str
    status_prefix: str
    qos: int
    interval: float
    dataset_path: str
    state_dir: str
    queue_size: int
    log_level: str
    replay_speed: Optional[float] = None
    rate: Optional[float] = None
    dry_run: bool = False
    max_readings: Optional[int] = None  # --count (a field named count would hide tuple.count)
    faults: Optional[FaultSpec] = None  # seeded fault injection (edge_agent.faults); off: None

    @property
    def telemetry_topic(self) -> str:
        return telemetry_topic(self.device_id, self.topic_prefix)

    @property
    def status_topic(self) -> str:
        return status_topic(self.device_id, self.status_prefix)


# --- value parsers: each raises ValueError with a short reason ---------------------------
# The parse_* ones are shared with the consumer, which reads the same MQTT settings.


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def parse_port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a port number (1..65535)") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"{port} is out of range (1..65535)")
    return port


def _qos(value: str) -> int:
    if value.strip() not in ("0", "1", "2"):
        raise ValueError(f"{value!r} is not a valid QoS (0, 1 or 2)")
    return int(value)


def parse_positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{value!r} must be a number > 0")
    return number


def parse_positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an integer") from None
    if number < 1:
        raise ValueError(f"{number} must be >= 1")
    return number


def _mac(value: str) -> str:
    mac = value.strip().lower().replace("-", ":")
    if not MAC_RE.match(mac):
        raise ValueError(f"{value!r} is not a MAC address like aa:bb:cc:dd:ee:ff")
    return mac


def parse_topic_prefix(value: str) -> str:
    prefix = value.rstrip("/")
    if not prefix or any(c in prefix for c in "+#\0"):
        raise ValueError(f"{value!r} is not a valid topic prefix (no wildcards, not empty)")
    return prefix


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def _faults(value: str) -> FaultSpec:
    from .faults import parse_spec  # only when fault injection is asked for

    return parse_spec(value)


class _Setting(NamedTuple):
    env: str
    field: str
    flag: Optional[str]  # None: never on the command line (secrets)
    parse: Callable[[str], Any]
    default: Optional[str]


SETTINGS: tuple[_Setting, ...] = (
    _Setting("DEVICE_NAME", "device_name", "--device-name", _text, None),
    _Setting("DEVICE_ID", "device_id", "--device-id", _mac, None),
    _Setting("MQTT_BROKER", "broker", "--broker", _text, "localhost"),
    _Setting("MQTT_PORT", "port", "--port", parse_port, "1883"),
    _Setting("MQTT_USERNAME", "username", "--username", _text, None),
    _Setting("MQTT_PASSWORD", "password", None, str, None),
    _Setting("MQTT_TLS_CA", "tls_ca", "--tls-ca", _text, None),
    _Setting("MQTT_TLS_CERT", "tls_cert", "--tls-cert", _text, None),
    _Setting("MQTT_TLS_KEY", "tls_key", "--tls-key", _text, None),
    _Setting("MQTT_CLIENT_ID", "client_id", "--client-id", _text, None),
    _Setting(
        "TOPIC_PREFIX", "topic_prefix", "--topic-prefix", parse_topic_prefix, TELEMETRY_PREFIX
    ),
    _Setting(
        "STATUS_PREFIX", "status_prefix", "--status-prefix", parse_topic_prefix, STATUS_PREFIX
    ),
    _Setting("QOS", "qos", "--qos", _qos, "1"),
    _Setting("PUBLISH_INTERVAL", "interval", "--interval", parse_positive_float, "5.0"),
    _Setting("DATASET_PATH", "dataset_path", "--dataset", _text, None),
    _Setting("STATE_DIR", "state_dir", "--state-dir", _text, "/var/lib/edge-agent"),
    _Setting("QUEUE_SIZE", "queue_size", "--queue-size", parse_positive_int, "10000"),
    _Setting("LOG_LEVEL", "log_level", "--log-level", _log_level, "INFO"),
    _Setting("EDGE_AGENT_FAULTS", "faults", "--faults", _faults, None),
)
CONFIG_KEYS = {s.env.lower(): s for s in SETTINGS}


# Flags that take a value and have no environment variable, with their argparse dest.
FLAG_ONLY = {
    "--config": "config",
    "--replay-speed": "replay_speed",
    "--rate": "rate",
    "--count": "count",
}


def build_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Replay a sensor dataset slice as MQTT telemetry. Settings come from flags, "
        "then environment variables (names in brackets), then --config, then defaults. "
        "MQTT_PASSWORD is read from the environment or the config file only.",
    )
    for s in SETTINGS:
        if s.flag is None:
            continue
        default = f", default {s.default}" if s.default else ""
        # Values stay strings here so that errors name the setting the same way for
        # flags, environment and config file.
        parser.add_argument(s.flag, dest=s.field, metavar="VALUE", help=f"[{s.env}{default}]")
    parser.add_argument("--config", metavar="PATH", help="JSON file; keys are env names lowercased")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--replay-speed",
        metavar="X",
        help="replay the dataset's original gaps divided by X instead of a fixed interval",
    )
    pace.add_argument("--rate", metavar="R", help="publish R messages per second")
    parser.add_argument(
        "--dry-run", action="store_true", help="print payloads to stdout; no MQTT, no state"
    )
    parser.add_argument("--count", metavar="N", help="stop cleanly after N readings are published")
    return parser


def _parse_simple(argv: Sequence[str]) -> Optional[dict[str, Any]]:
    """What build_parser().parse_args(argv) returns, as a dict, when argv holds only full flag
    names as `--flag VALUE` (VALUE not starting with "-"), `--flag=VALUE` and `--dry-run`, each
    at most once; None for anything else (--help, abbreviations, errors...), which argparse
    then handles. The unit's command line (none, or --rate/--replay-speed) never needs it."""
    dests = {s.flag: s.field for s in SETTINGS if s.flag is not None}
    dests.update(FLAG_ONLY)
    args: dict[str, Any] = dict.fromkeys(dests.values())
    args["dry_run"] = False
    seen = set()
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        i += 1
        if flag == "--dry-run" and not eq:
            args["dry_run"] = True
            continue
        if flag not in dests or flag in seen:
            return None
        if not eq:
            if i >= len(argv) or argv[i].startswith("-"):
                return None
            value = argv[i]
            i += 1
        seen.add(flag)
        args[dests[flag]] = value
    if args["replay_speed"] is not None and args["rate"] is not None:
        return None  # mutually exclusive: argparse says so
    return args


def _read_config_file(path: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ConfigError("--config", f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{path} must contain a JSON object")
    values: dict[str, str] = {}
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            raise ConfigError(
                "--config",
                f"unknown key {key!r} in {path} (known: {', '.join(sorted(CONFIG_KEYS))})",
            )
        env = CONFIG_KEYS[key].env
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ConfigError(env, f"{key} in {path} must be a string or a number")
        values[env] = str(value)
    return values


def default_mac(
    route_file: str = "/proc/net/route", net_dir: str = "/sys/class/net"
) -> Optional[str]:
    """MAC of the default-route interface, falling back to eth0 then wlan0."""
    candidates: list[str] = []
    try:
        with open(route_file, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                # Destination 00000000 with the RTF_UP flag is the default route.
                if len(fields) > 3 and fields[1] == "00000000" and int(fields[3], 16) & 1:
                    candidates.append(fields[0])
    except (OSError, ValueError):
        pass
    candidates += ["eth0", "wlan0"]
    for iface in candidates:
        try:
            with open(os.path.join(net_dir, iface, "address"), encoding="ascii") as f:
                mac = _mac(f.read())
        except (OSError, ValueError):
            continue
        if mac != "00:00:00:00:00:00":
            return mac
    return None


def load_config(
    argv: Optional[Sequence[str]] = None, environ: Optional[Mapping[str, str]] = None
) -> AgentConfig:
    """Parse argv and environ into an AgentConfig; raises ConfigError (argparse exits 2)."""
    environ = os.environ if environ is None else environ
    if argv is None:
        argv = sys.argv[1:]
    args = _parse_simple(argv)
    if args is None:
        args = vars(build_parser().parse_args(argv))
    file_values = _read_config_file(args["config"]) if args["config"] else {}

    values: dict[str, Any] = {}
    for s in SETTINGS:
        raw = args.get(s.field)
        if raw is None and environ.get(s.env):  # empty env vars count as unset
            raw = environ[s.env]
        if raw is None:
            raw = file_values.get(s.env, s.default)
        if raw is None:
            values[s.field] = None
            continue
        try:
            values[s.field] = s.parse(raw)
        except ValueError as e:
            raise ConfigError(s.env, str(e)) from None

    if values["dataset_path"] is None:
        raise ConfigError("DATASET_PATH", "not set; pass --dataset PATH or set DATASET_PATH")
    if values["device_name"] is None:
        values["device_name"] = socket.gethostname()
    if values["device_id"] is None:
        values["device_id"] = default_mac()
        if values["device_id"] is None:
            raise ConfigError(
                "DEVICE_ID", "no MAC found on the default-route interface, eth0 or wlan0; set it"
            )
    if values["client_id"] is None:
        values["client_id"] = values["device_id"]
    if values["tls_key"] and not values["tls_cert"]:
        raise ConfigError("MQTT_TLS_KEY", "set MQTT_TLS_CERT too (client key without certificate)")
    if values["tls_cert"] and not values["tls_ca"]:
        raise ConfigError("MQTT_TLS_CERT", "client certificates need MQTT_TLS_CA (TLS is off)")

    flag_only: dict[str, Any] = {"dry_run": args["dry_run"]}
    for field, dest, flag, parse in (
        ("replay_speed", "replay_speed", "--replay-speed", parse_positive_float),
        ("rate", "rate", "--rate", parse_positive_float),
        ("max_readings", "count", "--count", parse_positive_int),
    ):
        raw = args[dest]
        try:
            flag_only[field] = None if raw is None else parse(raw)
        except ValueError as e:
            raise ConfigError(flag, str(e)) from None
    return AgentConfig(**values, **flag_only)
