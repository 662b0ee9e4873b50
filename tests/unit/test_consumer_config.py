"""Consumer configuration: flags over environment, one-line usage errors, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from edge_consumer.cli import main
from edge_consumer.config import ConfigError, load_config


def test_defaults() -> None:
    c = load_config([], {})
    assert (c.broker, c.port, c.topic_prefix, c.status_prefix) == (
        "localhost",
        1883,
        "iot/telemetry",
        "iot/status",
    )
    assert c.format == "pretty" and c.max_payload == 4096 and c.min_messages == 1
    assert c.client_id.startswith("edge-consumer-") and not c.persistent
    assert not c.fleet_check and c.password is None


def test_environment_is_used_and_flags_override_it(tmp_path: Path) -> None:
    env = {"MQTT_BROKER": "broker.env", "MQTT_PORT": "1884", "MQTT_USERNAME": "envuser"}
    env["MQTT_PASSWORD"] = "envpass"
    c = load_config([], env)
    assert (c.broker, c.port, c.username, c.password) == ("broker.env", 1884, "envuser", "envpass")
    pw = tmp_path / "pw"
    pw.write_text("filepass\n")
    c = load_config(
        ["--broker", "flag", "--port", "2000", "--username", "u", "--password-file", str(pw)], env
    )
    assert (c.broker, c.port, c.username, c.password) == ("flag", 2000, "u", "filepass")


def test_expect_ids_file(tmp_path: Path) -> None:
    ids = tmp_path / "ids"
    ids.write_text("# fleet\n02:42:AC:11:00:01\n\n02-42-ac-11-00-02  # second\n02:42:ac:11:00:01\n")
    c = load_config(["--expect-ids", str(ids), "--min-messages", "3", "--timeout", "5"], {})
    assert c.expect_ids == ("02:42:ac:11:00:01", "02:42:ac:11:00:02")
    assert c.fleet_check and c.min_messages == 3 and c.timeout == 5.0


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--port", "abc"], {}, "--port: 'abc' is not a port number"),
        ([], {"MQTT_PORT": "70000"}, "MQTT_PORT: 70000 is out of range"),
        (["--persistent"], {}, "--persistent: needs a fixed --client-id"),
        (["--max-payload", "0"], {}, "--max-payload: 0 must be >= 1"),
        (["--duration", "-1"], {}, "--duration: '-1' must be a number > 0"),
        (["--duration", "nan"], {}, "--duration: 'nan' must be a number > 0"),
        (["--expect", "x"], {}, "--expect: 'x' is not an integer"),
        (["--min-messages", "0"], {}, "--min-messages: 0 must be >= 1"),
        (["--timeout", "5"], {}, "--timeout: only applies to a fleet check"),
        (["--topic-prefix", "iot/+"], {}, "--topic-prefix: 'iot/+' is not a valid topic prefix"),
        (["--expect-ids", "/nonexistent"], {}, "--expect-ids: cannot read"),
        (["--password-file", "/nonexistent"], {}, "--password-file: cannot read"),
        (["--tls-ca", "/nonexistent"], {}, "--tls-ca: '/nonexistent' is not a readable file"),
        (["--format", "xml"], {}, "argument --format: invalid choice"),
        (["--live", "--format", "json"], {}, "--live: cannot be combined with --format json"),
        (["--bogus"], {}, "unrecognized arguments: --bogus"),
    ],
)
def test_errors(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(argv, env)
    assert str(info.value).startswith(message)


def test_expect_and_expect_ids_are_exclusive(tmp_path: Path) -> None:
    ids = tmp_path / "ids"
    ids.write_text("02:42:ac:11:00:01\n")
    with pytest.raises(ConfigError, match="either --expect or --expect-ids"):
        load_config(["--expect", "1", "--expect-ids", str(ids)], {})


@pytest.mark.parametrize("content", ["", "# only comments\n", "not-a-mac\n"])
def test_bad_expect_ids_files(tmp_path: Path, content: str) -> None:
    ids = tmp_path / "ids"
    ids.write_text(content)
    with pytest.raises(ConfigError, match="--expect-ids"):
        load_config(["--expect-ids", str(ids)], {})


def test_cli_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "edge-consumer: error: --port: 0 is out of range (1..65535)\n"


def test_store_and_anomaly_settings_from_flags_and_environment() -> None:
    c = load_config([], {})
    assert c.store is None and c.retention_days == 30 and not c.anomalies
    env = {
        "EDGE_CONSUMER_STORE": "sqlite:///var/lib/t.db",
        "EDGE_CONSUMER_RETENTION_DAYS": "0",
        "EDGE_CONSUMER_ANOMALIES": "yes",
    }
    c = load_config([], env)
    assert (c.store, c.retention_days, c.anomalies) == ("sqlite:///var/lib/t.db", None, True)
    c = load_config(["--store", "postgresql:///x", "--retention-days", "7", "--anomalies"], {})
    assert (c.store, c.retention_days, c.anomalies) == ("postgresql:///x", 7, True)
    assert "postgresql" not in repr(c)  # a store URL may carry a password


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--retention-days", "-3"], {}, "--retention-days"),
        (["--retention-days", "week"], {}, "--retention-days"),
        ([], {"EDGE_CONSUMER_ANOMALIES": "maybe"}, "EDGE_CONSUMER_ANOMALIES"),
        (["--store", " "], {}, "--store"),
    ],
)
def test_store_setting_errors_name_the_setting(
    argv: list[str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(argv, env)


def test_a_bad_store_url_is_one_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", "mysql://db/x", "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-consumer: error: --store:") and "unknown store URL" in err
    assert len(err.splitlines()) == 1
