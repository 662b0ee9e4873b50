"""A real Prometheus on the controller, configured by the `prometheus` role's own templates.

The controller has no systemd as PID 1, so the Debian binary runs directly, as conftest.py runs
mosquitto: a temp config, its TSDB in a temp dir, the API on a free loopback port. The config
and the alert rules are rendered by Ansible from roles/prometheus/templates with the role's
defaults (plus overrides), so the tests scrape and alert exactly as the monitor host does.

    from prometheus_fixture import prometheus_server  # a pytest fixture factory, see below

    def test_x(prometheus_server, ...):
        prom = prometheus_server(targets=[f"127.0.0.1:{port}"])  # started, rules loaded
        prom.wait_for_scrapes(2)
        assert prom.value('edge_fleet_devices{state="online"}') == 3
        prom.wait_for_alert("EdgeDeviceSilent", device_id="0a:ed:9e:00:00:02")

Import the fixture into a test module (`from prometheus_fixture import prometheus_server`) or
into a conftest.py. Scrapes and rule evaluation default to every second, and the role's alert
`for:` durations can be shortened with `role_vars`, e.g. {"prometheus_alert_silent_for": "5s"}.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from support.polling import wait_until
from support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "prometheus"
BIN = Path(sys.executable).parent
PROMETHEUS = os.environ.get("PROMETHEUS", "/usr/bin/prometheus")
PROMTOOL = os.environ.get("PROMTOOL", "/usr/bin/promtool")
CONSUMER_JOB = "edge-consumer"  # the role's prometheus_consumer_job_name


def template_lookup(path: Path) -> str:
    """A Jinja expression that renders the template at `path` with the task's variables."""
    return "{{ lookup('ansible.builtin.template', " + repr(str(path)) + ") }}"


def render_role_templates(
    outputs: Mapping[str, Path], role_vars: Optional[Mapping[str, Any]] = None
) -> None:
    """Render roles/prometheus/templates/<name> to each path with the real Ansible.

    The role's defaults/main.yml are the variables, `role_vars` override them (as a playbook's
    role vars would). One ansible-playbook run renders them all through Ansible's template
    lookup (no module runs, so it takes a second or two), outside the project directory, so
    that its ansible.cfg (the fleet inventory, Mitogen) plays no part.
    """
    workdir = next(iter(outputs.values())).parent
    workdir.mkdir(parents=True, exist_ok=True)
    names = list(outputs)
    play = {
        "name": "Render the prometheus role's templates",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars_files": [str(ROLE / "defaults" / "main.yml")],
        "tasks": [
            {
                "name": f"Render {name}",
                "ansible.builtin.debug": {"msg": template_lookup(ROLE / "templates" / name)},
                # Task vars: above the defaults, as role vars are.
                "vars": dict(role_vars or {}),
            }
            for name in names
        ],
    }
    playbook = workdir / "render-prometheus-role.yml"
    playbook.write_text(json.dumps([play], indent=1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        PYTHONWARNINGS="ignore",
    )
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), str(playbook)],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"rendering the prometheus role's templates failed:\n{result.stdout}")
    tasks = json.loads(result.stdout)["plays"][0]["tasks"]
    for name, task in zip(names, tasks):
        outputs[name].write_text(task["hosts"]["localhost"]["msg"])


class PrometheusError(RuntimeError):
    pass


class Prometheus:
    """prometheus with the role's config and rules, scraping `targets` as job edge-consumer."""

    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[str],
        *,
        scrape_interval: str = "1s",
        role_vars: Optional[Mapping[str, Any]] = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.config = workdir / "prometheus.yml"
        self.rules = workdir / "edge-fleet.rules.yml"
        self.log = workdir / "prometheus.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.role_vars: dict[str, Any] = {
            "prometheus_listen_address": f"{self.host}:{self.port}",
            "prometheus_rules_dir": str(workdir),
            "prometheus_consumer_targets": list(targets),
            "prometheus_scrape_interval": scrape_interval,
            **(role_vars or {}),
        }
        render_role_templates(
            {"edge-fleet.rules.yml.j2": self.rules, "prometheus.yml.j2": self.config},
            self.role_vars,
        )

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None, "already running"
        log = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--storage.tsdb.retention.time=1d",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        proc = self.proc
        wait_until(lambda: proc.poll() is not None or self._ready(), timeout, 0.2)
        if not self._ready():
            self.stop()
            raise PrometheusError(
                f"prometheus did not get ready on {self.port}:\n{self.log_text()}"
            )

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_text(self, tail: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-tail:] if self.log.exists() else ""

    # --- HTTP API ------------------------------------------------------------------------

    def api(self, path: str, params: Optional[Mapping[str, Any]] = None) -> Any:
        """GET /api/v1/<path>; returns `data`, raises PrometheusError with the API's error."""
        query = f"?{urllib.parse.urlencode(params, doseq=True)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params or {})}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result series (vector), or one element for a scalar."""
        data = self.api("query", {"query": expr})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def value(self, expr: str) -> Optional[float]:
        """The value of an expression with exactly one result, or None when it has none."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) != 1:
            raise PrometheusError(f"{expr}: {len(result)} series, not one: {result}")
        return float(result[0]["value"][1])

    def targets(self, job: str = CONSUMER_JOB) -> list[dict[str, Any]]:
        active = self.api("targets", {"state": "active"})["activeTargets"]
        return [t for t in active if t["labels"].get("job") == job]

    def wait_for_scrapes(
        self, count: int = 2, job: str = CONSUMER_JOB, timeout: float = 60.0
    ) -> None:
        """Until every target of `job` has been scraped successfully `count` times or more."""
        expr = f'min(sum_over_time(up{{job="{job}"}}[10m]))'

        def scraped() -> bool:
            got = self.value(expr)
            return got is not None and got >= count

        if not wait_until(scraped, timeout, 0.5):
            raise PrometheusError(f"{job} not scraped {count} times: {self.targets(job)}")

    def alerts(
        self, name: Optional[str] = None, state: Optional[str] = None
    ) -> list[dict[str, Any]]:
        """Active alerts (pending and firing), optionally of one name and state."""
        found = self.api("alerts")["alerts"]
        return [
            a
            for a in found
            if (name is None or a["labels"].get("alertname") == name)
            and (state is None or a["state"] == state)
        ]

    def wait_for_alert(
        self, name: str, state: str = "firing", timeout: float = 120.0, **labels: str
    ) -> dict[str, Any]:
        """Until alert `name` is in `state` with these labels; returns it (labels, annotations)."""
        match: list[dict[str, Any]] = []

        def found() -> bool:
            match[:] = [
                a
                for a in self.alerts(name, state)
                if all(a["labels"].get(key) == value for key, value in labels.items())
            ]
            return bool(match)

        if not wait_until(found, timeout, 0.5):
            raise PrometheusError(f"no {state} {name} {labels} in {timeout}s: {self.alerts()}")
        return match[0]


PrometheusFactory = Callable[..., Prometheus]


def require_prometheus() -> None:
    for binary in (PROMETHEUS, PROMTOOL):
        if not (os.path.exists(binary) and os.access(binary, os.X_OK)):
            pytest.skip(f"{binary} not installed (apt-get install prometheus)")
    if shutil.which("ansible-playbook", path=str(BIN)) is None:
        pytest.skip("ansible-playbook is not in the virtualenv")


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """A factory: prometheus_server(targets=[...], scrape_interval="1s", role_vars={...},
    consumer_auth=("user", "password")).

    Each call renders the role's config and rules for those targets, starts Prometheus and
    returns it once ready; all are stopped at teardown (their logs stay in tmp_path).
    consumer_auth: the consumer's HTTP Basic login (edge-consumer --http-user and
    EDGE_CONSUMER_HTTP_PASSWORD), sent on every scrape.
    """
    require_prometheus()
    servers: list[Prometheus] = []

    def make(
        targets: Sequence[str],
        *,
        scrape_interval: str = "1s",
        role_vars: Optional[Mapping[str, Any]] = None,
        consumer_auth: Optional[tuple[str, str]] = None,
        name: str = "prometheus",
    ) -> Prometheus:
        workdir = tmp_path / f"{name}-{len(servers)}"
        # Rules evaluate as often as the scrapes, so alerts follow within a second or two.
        merged: dict[str, Any] = {"prometheus_evaluation_interval": scrape_interval}
        if consumer_auth is not None:  # as the role does: the password in its own file
            workdir.mkdir(parents=True)
            password_file = workdir / "edge-consumer.password"
            password_file.write_text(consumer_auth[1])
            password_file.chmod(0o600)
            merged["prometheus_consumer_username"] = consumer_auth[0]
            merged["prometheus_consumer_password_file"] = str(password_file)
        merged.update(role_vars or {})
        server = Prometheus(workdir, targets, scrape_interval=scrape_interval, role_vars=merged)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()
