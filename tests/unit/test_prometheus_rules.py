"""The prometheus role's alert rules and config, rendered by Ansible and checked by promtool.

monitoring/tests/*.test.yml are promtool unit tests (`promtool test rules`) of the rules as the
role renders them with the values their header names; the config must pass `promtool check
config` with its rules; and every role variable is documented and validated.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "prometheus"
PROMTOOL_TESTS = sorted((ROOT / "monitoring" / "tests").glob("*.test.yml"))
PROMTOOL = os.environ.get("PROMTOOL", "/usr/bin/promtool")
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
ALERTS = {
    "EdgeDeviceSilent",
    "EdgeDeviceGapsIncreasing",
    "EdgeBrokerUnreachable",
    "EdgeAgentOverflowIncreasing",
    "EdgeSensorAnomaly",
    "EdgeTelemetryStoreDown",
    "EdgeTelemetryStoreRejecting",
    "EdgeTelemetryStoreDeadLetters",
    "EdgeFleetSilence",
}
# Alerts on the consumer as a whole (its instance), not on one device.
CONSUMER_ALERTS = {
    "EdgeBrokerUnreachable",
    "EdgeTelemetryStoreDown",
    "EdgeTelemetryStoreRejecting",
    "EdgeTelemetryStoreDeadLetters",
    "EdgeFleetSilence",
}
# What monitoring/tests/edge-fleet.rules.test.yml was written for (its header says the same).
TESTED_VARS = {
    "prometheus_device_interval_seconds": 5,
    "prometheus_silent_intervals": 3,
    "prometheus_alert_silent_for": "30s",
    "prometheus_alert_gaps_for": "30s",
    "prometheus_alert_overflow_for": "30s",
    "prometheus_alert_broker_for": "30s",
    "prometheus_alert_anomaly_for": "0s",
    "prometheus_alert_anomaly_exclude_kinds": ["dropout"],
    "prometheus_alert_store_for": "1m",
    "prometheus_alert_store_rejected_for": "0s",
    "prometheus_alert_store_dead_letters_for": "0s",
    "prometheus_alert_fleet_silence_for": "0s",
    "prometheus_alert_increase_window": "5m",
    "prometheus_consumer_job_name": "edge-consumer",
}
# Each alert's `for:` with TESTED_VARS.
TESTED_FOR = {
    **{alert: "30s" for alert in ALERTS},
    "EdgeSensorAnomaly": "0s",
    "EdgeTelemetryStoreDown": "1m",
    "EdgeTelemetryStoreRejecting": "0s",
    "EdgeTelemetryStoreDeadLetters": "0s",
    "EdgeFleetSilence": "0s",
}
# Other values, to see the rules and the config follow the variables.
CUSTOM_VARS = {
    "prometheus_device_interval_seconds": 2,
    "prometheus_silent_intervals": 4,
    "prometheus_alert_silent_for": "10s",
    "prometheus_alert_increase_window": "2m",
    "prometheus_alert_anomaly_for": "15s",
    "prometheus_alert_anomaly_exclude_kinds": ["dropout", "stuck"],
    "prometheus_alert_store_for": "5m",
    "prometheus_alert_store_rejected_for": "1m",
    "prometheus_alert_store_dead_letters_for": "2m",
    "prometheus_consumer_job_name": "monitor",
    "prometheus_consumer_targets": ["mon-1:9100", "mon-2:9100"],
    "prometheus_listen_address": "10.0.0.5:9091",
    "prometheus_consumer_username": "dashboard",
    "prometheus_consumer_password": "not-in-the-config",
}
TEMPLATES = {
    "edge-fleet.rules.yml.j2": "edge-fleet.rules.yml",
    "prometheus.yml.j2": "prometheus.yml",
}


def template_lookup(path: Path) -> str:
    """A Jinja expression that renders the template at `path` with the task's variables."""
    return "{{ lookup('ansible.builtin.template', " + repr(str(path)) + ") }}"


def render(variants: Mapping[str, tuple[Path, Mapping[str, Any]]]) -> None:
    """Render the rules and the config once per variant, {name: (directory, role vars)}, with
    the role's defaults and those vars (prometheus_rules_dir is the directory).

    One ansible-playbook run renders them all through Ansible's template lookup (as
    tests/integration/prometheus_fixture.py does), outside the project directory (its
    ansible.cfg plays no part); the vars are task vars, which override the defaults as role
    vars do.
    """
    jobs = [
        (workdir, src, {"prometheus_rules_dir": str(workdir), **role_vars})
        for workdir, role_vars in variants.values()
        for src in TEMPLATES
    ]
    play = {
        "name": "Render",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars_files": [str(ROLE / "defaults" / "main.yml")],
        "tasks": [
            {
                "ansible.builtin.debug": {"msg": template_lookup(ROLE / "templates" / src)},
                "vars": task_vars,
            }
            for _workdir, src, task_vars in jobs
        ],
    }
    first = next(iter(variants.values()))[0]
    for workdir, _vars in variants.values():
        workdir.mkdir(parents=True, exist_ok=True)
    (first / "render.yml").write_text(json.dumps([play]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        PYTHONWARNINGS="ignore",
    )
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "render.yml"],
        cwd=first, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    tasks = json.loads(result.stdout)["plays"][0]["tasks"]
    for (workdir, src, _vars), task in zip(jobs, tasks):
        (workdir / TEMPLATES[src]).write_text(task["hosts"]["localhost"]["msg"])


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """{"tested": {"rules": path, "config": path}, "custom": {...}, "all_kinds": {...}}, the
    promtool tests copied beside the tested rules."""
    if not os.access(PROMTOOL, os.X_OK):
        pytest.skip(f"{PROMTOOL} not installed (apt-get install prometheus)")
    base = tmp_path_factory.mktemp("prometheus-role")
    variants = {
        "tested": (base / "tested", TESTED_VARS),
        "custom": (base / "custom", CUSTOM_VARS),
        "all_kinds": (base / "all_kinds", {"prometheus_alert_anomaly_exclude_kinds": []}),
    }
    render(variants)
    for test in PROMTOOL_TESTS:
        shutil.copy(test, base / "tested" / test.name)
    return {
        name: {"rules": workdir / TEMPLATES["edge-fleet.rules.yml.j2"],
               "config": workdir / TEMPLATES["prometheus.yml.j2"]}
        for name, (workdir, _vars) in variants.items()
    }  # fmt: skip


def load_rules(path: Path) -> list[dict[str, Any]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_unit_tests_of_the_rules_pass(rendered: dict[str, dict[str, Path]]) -> None:
    tested = rendered["tested"]
    assert PROMTOOL_TESTS, "no monitoring/tests/*.test.yml"
    workdir = tested["rules"].parent
    result = promtool("test", "rules", *(test.name for test in PROMTOOL_TESTS), cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_config_and_rules_pass_promtool(rendered: dict[str, dict[str, Path]]) -> None:
    tested = rendered["tested"]
    workdir = tested["rules"].parent
    rules = promtool("check", "rules", str(tested["rules"]), cwd=workdir)
    found = f"{len(ALERTS)} rules found"
    assert rules.returncode == 0 and found in rules.stdout, rules.stdout + rules.stderr
    # From another directory: the config names its rules by absolute path, as the role's
    # `validate:` runs it on a temporary copy far from /etc/prometheus.
    config = promtool("check", "config", str(tested["config"]), cwd=Path("/"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout and found in config.stdout

    parsed = yaml.safe_load(tested["config"].read_text())
    jobs = {job["job_name"]: job for job in parsed["scrape_configs"]}
    assert jobs["edge-consumer"]["static_configs"] == [{"targets": ["localhost:9180"]}]
    assert "basic_auth" not in jobs["edge-consumer"]  # no login by default
    assert jobs["prometheus"]["static_configs"] == [{"targets": ["localhost:9090"]}]
    assert parsed["rule_files"] == [str(tested["rules"])]


def test_the_alerts_have_severity_and_name_the_device(
    rendered: dict[str, dict[str, Path]],
) -> None:
    rules = load_rules(rendered["tested"]["rules"])
    assert {rule["alert"] for rule in rules} == ALERTS and len(rules) == len(ALERTS)
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["for"] == TESTED_FOR[rule["alert"]], rule
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        if rule["alert"] == "EdgeBrokerUnreachable":
            assert "$labels.instance" in summary and "$labels.cause" in summary
        elif rule["alert"] in CONSUMER_ALERTS:
            assert "$labels.instance" in summary and "$labels.instance" in description, rule
        else:
            for text in (summary, description):
                assert "$labels.device_name" in text and "$labels.device_id" in text, rule
    silent = next(rule for rule in rules if rule["alert"] == "EdgeDeviceSilent")
    assert silent["expr"] == "time() - edge_fleet_device_last_seen_timestamp_seconds > 3 * 5"
    by_name = {rule["alert"]: rule for rule in rules}
    anomaly = by_name["EdgeSensorAnomaly"]
    assert "$labels.kind" in anomaly["annotations"]["summary"]
    assert 'increase(edge_fleet_anomalies_total{kind!~"dropout"}[5m]) > 0' in anomaly["expr"]
    assert "group_left (device_name)" in anomaly["expr"]
    assert by_name["EdgeTelemetryStoreDown"]["expr"] == "edge_fleet_store_up == 0"
    assert by_name["EdgeTelemetryStoreDown"]["labels"]["severity"] == "critical"
    assert (
        by_name["EdgeTelemetryStoreRejecting"]["expr"]
        == "increase(edge_fleet_store_rejected_total[5m]) > 0"
    )
    dead = by_name["EdgeTelemetryStoreDeadLetters"]
    assert dead["expr"] == "increase(edge_fleet_store_dead_letters_total[5m]) > 0"
    assert dead["labels"]["severity"] == "warning"


def test_thresholds_follow_the_role_variables(rendered: dict[str, dict[str, Path]]) -> None:
    files = rendered["custom"]
    rules = {rule["alert"]: rule for rule in load_rules(files["rules"])}
    assert rules["EdgeDeviceSilent"]["expr"].endswith("> 4 * 2")
    assert rules["EdgeDeviceSilent"]["for"] == "10s"
    assert "edge_fleet_device_gaps_total[2m]" in rules["EdgeDeviceGapsIncreasing"]["expr"]
    assert (
        "edge_fleet_device_agent_overflow_total[2m]"
        in (rules["EdgeAgentOverflowIncreasing"]["expr"])
    )
    assert 'up{job="monitor"}' in rules["EdgeBrokerUnreachable"]["expr"]
    anomaly = rules["EdgeSensorAnomaly"]
    assert 'edge_fleet_anomalies_total{kind!~"dropout|stuck"}[2m]' in anomaly["expr"]
    assert "offset 2m" in anomaly["expr"] and anomaly["for"] == "15s"
    assert rules["EdgeTelemetryStoreDown"]["for"] == "5m"
    assert "edge_fleet_store_rejected_total[2m]" in rules["EdgeTelemetryStoreRejecting"]["expr"]
    assert rules["EdgeTelemetryStoreRejecting"]["for"] == "1m"
    dead = rules["EdgeTelemetryStoreDeadLetters"]
    assert "edge_fleet_store_dead_letters_total[2m]" in dead["expr"] and dead["for"] == "2m"
    # No kind left out: no matcher at all, and the rules still pass promtool.
    all_kinds = rendered["all_kinds"]["rules"]
    anomaly = next(r for r in load_rules(all_kinds) if r["alert"] == "EdgeSensorAnomaly")
    assert "kind!~" not in anomaly["expr"]
    assert "increase(edge_fleet_anomalies_total[5m]) > 0" in anomaly["expr"]
    check = promtool("check", "rules", str(all_kinds), cwd=Path("/"))
    assert check.returncode == 0, check.stdout + check.stderr
    config = yaml.safe_load(files["config"].read_text())
    jobs = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert jobs == {"monitor": ["mon-1:9100", "mon-2:9100"], "prometheus": ["10.0.0.5:9091"]}
    consumer = config["scrape_configs"][0]
    assert consumer["basic_auth"] == {
        "username": "dashboard",
        "password_file": "/etc/prometheus/edge-consumer.password",
    }
    assert "not-in-the-config" not in files["config"].read_text()
    check = promtool("check", "config", str(files["config"]), cwd=Path("/"))
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_role_variable_is_documented_and_validated() -> None:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    for name, option in options.items():
        assert option.get("description"), f"{name} has no description"
        if "default" in option:  # a spec default must be the role's default
            assert option["default"] == defaults[name], name
    # Every variable a template uses is a role variable.
    used: set[str] = set()
    for template in (ROLE / "templates").glob("*.j2"):
        used |= set(re.findall(r"\bprometheus_[a-z0-9_]+", template.read_text()))
    assert used <= set(defaults), sorted(used - set(defaults))
