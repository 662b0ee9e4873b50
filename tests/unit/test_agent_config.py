"""edge-agent configuration: precedence, defaults and one-line errors (exit 2)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from edge_agent.cli import main
from edge_agent.config import CONFIG_KEYS, SETTINGS, ConfigError, default_mac, load_config

HEADER = '"ts","device","co","humidity","light","lpg","motion","smoke","temp"\n'
ROW = (
    '"1.5945120943859746E9","b8:27:eb:bf:9d:51","0.0049","51.0","false","0.0076","false",'
    '"0.02","22.7"\n'
)
BASE_ENV = {"DATASET_PATH": "/data/slice.csv", "DEVICE_ID": "02:42:ac:11:00:02"}


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for s in SETTINGS:
        monkeypatch.delenv(s.env, raising=False)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    path = tmp_path / "slice.csv"
    path.write_text(HEADER + ROW)
    return path


def test_defaults() -> None:
    cfg = load_config([], BASE_ENV)
    assert cfg.broker == "localhost"
    assert cfg.port == 1883
    assert cfg.qos == 1
    assert cfg.interval == 5.0
    assert cfg.topic_prefix == "iot/telemetry"
    assert cfg.status_prefix == "iot/status"
    assert cfg.state_dir == "/var/lib/edge-agent"
    assert cfg.queue_size == 10000
    assert cfg.log_level == "INFO"
    assert cfg.client_id == "02:42:ac:11:00:02"
    assert cfg.device_name == socket.gethostname()
    assert cfg.username is cfg.password is cfg.tls_ca is None
    assert cfg.rate is cfg.replay_speed is cfg.max_readings is None
    assert not cfg.dry_run
    assert cfg.telemetry_topic == "iot/telemetry/02:42:ac:11:00:02"
    assert cfg.status_topic == "iot/status/02:42:ac:11:00:02"


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    conf = tmp_path / "agent.json"
    conf.write_text(json.dumps({"mqtt_port": 1001, "qos": 0, "mqtt_broker": "file-host"}))
    env = {**BASE_ENV, "MQTT_PORT": "2002", "QOS": "2"}
    cfg = load_config(["--config", str(conf), "--port", "3003"], env)
    assert cfg.port == 3003  # flag beats env and file
    assert cfg.qos == 2  # env beats file
    assert cfg.broker == "file-host"  # file beats default
    assert cfg.interval == 5.0  # default


def test_config_file_supplies_password_and_every_key_is_known(tmp_path: Path) -> None:
    conf = tmp_path / "agent.json"
    conf.write_text(
        json.dumps(
            {
                "mqtt_username": "pi",
                "mqtt_password": "s3cret",
                **{k.lower(): v for k, v in BASE_ENV.items()},
            }
        )
    )
    cfg = load_config(["--config", str(conf)], {})
    assert (cfg.username, cfg.password) == ("pi", "s3cret")
    assert set(CONFIG_KEYS) == {s.env.lower() for s in SETTINGS}


def test_password_has_no_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_config(["--password", "x"], BASE_ENV)
    assert exc.value.code == 2


def test_empty_env_counts_as_unset() -> None:
    assert load_config([], {**BASE_ENV, "MQTT_PORT": ""}).port == 1883


def test_mac_is_normalised_and_client_id_follows() -> None:
    cfg = load_config(["--device-id", "02-42-AC-11-00-0F"], {"DATASET_PATH": "x"})
    assert cfg.device_id == cfg.client_id == "02:42:ac:11:00:0f"


def test_pacing_flags() -> None:
    assert load_config(["--rate", "20"], BASE_ENV).rate == 20.0
    assert load_config(["--replay-speed", "60"], BASE_ENV).replay_speed == 60.0
    with pytest.raises(SystemExit):
        load_config(["--rate", "1", "--replay-speed", "2"], BASE_ENV)


def test_default_mac_uses_default_route(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text(
        "Iface\tDestination\tGateway\tFlags\n"
        "eth1\t0000A8C0\t00000000\t0001\n"
        "wlan9\t00000000\t0100A8C0\t0003\n"
    )
    for iface, mac in (("eth0", "aa:aa:aa:aa:aa:aa"), ("wlan9", "B8:27:EB:00:00:01")):
        (tmp_path / iface).mkdir()
        (tmp_path / iface / "address").write_text(mac + "\n")
    assert default_mac(str(route), str(tmp_path)) == "b8:27:eb:00:00:01"
    route.write_text("Iface\tDestination\tGateway\tFlags\n")
    assert default_mac(str(route), str(tmp_path)) == "aa:aa:aa:aa:aa:aa"  # eth0 fallback
    assert default_mac(str(tmp_path / "none"), str(tmp_path / "none")) is None


@pytest.mark.parametrize(
    ("args", "env", "setting"),
    [
        (["--port", "abc"], {}, "MQTT_PORT"),
        (["--port", "70000"], {}, "MQTT_PORT"),
        ([], {"MQTT_PORT": "0"}, "MQTT_PORT"),
        (["--qos", "3"], {}, "QOS"),
        (["--interval", "0"], {}, "PUBLISH_INTERVAL"),
        ([], {"PUBLISH_INTERVAL": "nan"}, "PUBLISH_INTERVAL"),
        (["--queue-size", "0"], {}, "QUEUE_SIZE"),
        (["--device-id", "not-a-mac"], {}, "DEVICE_ID"),
        (["--log-level", "chatty"], {}, "LOG_LEVEL"),
        (["--topic-prefix", "iot/#"], {}, "TOPIC_PREFIX"),
        (["--rate", "-1"], {}, "--rate"),
        (["--replay-speed", "0"], {}, "--replay-speed"),
        (["--count", "x"], {}, "--count"),
        (["--tls-cert", "c.pem"], {}, "MQTT_TLS_CERT"),
        (["--dataset", "/nonexistent/slice.csv"], {}, "DATASET_PATH"),
    ],
)
def test_errors_exit_2_with_one_line_naming_the_setting(
    args: list[str],
    env: dict[str, str],
    setting: str,
    dataset: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    base = ["--dataset", str(dataset), "--device-id", "02:42:ac:11:00:02", "--dry-run"]
    assert main(base + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"edge-agent: error: {setting}: ")


def test_missing_dataset_setting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device-id", "02:42:ac:11:00:02"]) == 2
    assert capsys.readouterr().err.startswith("edge-agent: error: DATASET_PATH: not set")


@pytest.mark.parametrize(
    ("content", "setting", "fragment"),
    [
        ({"mqtt_port": 1, "colour": "red"}, "--config", "unknown key 'colour'"),
        ({"mqtt_port": "abc"}, "MQTT_PORT", "'abc'"),
        ({"qos": True}, "QOS", "string or a number"),
        ([1, 2], "--config", "JSON object"),
    ],
)
def test_config_file_errors(
    content: object,
    setting: str,
    fragment: str,
    tmp_path: Path,
    dataset: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    conf = tmp_path / "agent.json"
    conf.write_text(json.dumps(content))
    argv = ["--config", str(conf), "--dataset", str(dataset), "--device-id", "02:42:ac:11:00:02"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"edge-agent: error: {setting}: ")
    assert fragment in err


def test_config_file_unreadable_or_invalid(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(["--config", str(tmp_path / "missing.json")], BASE_ENV)
    assert exc.value.setting == "--config"
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(["--config", str(bad)], BASE_ENV)
