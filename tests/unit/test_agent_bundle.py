"""The agent bundle: what the controller lays out, and what the host decides to write and restart.

The module's decisions run in-process against a scratch root; systemctl is recorded, not run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "edge_agent"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ansible") is None, reason="needs ansible-core"
)


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bundle_{path.parent.name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def action() -> ModuleType:
    return load(ROLE / "action_plugins" / "edge_agent_bundle.py")


@pytest.fixture(scope="module")
def remote() -> ModuleType:
    return load(ROLE / "library" / "edge_agent_bundle.py")


@pytest.fixture
def sources(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "slices").mkdir()
    for number in (1, 2, 3):
        (tmp_path / "slices" / f"device-{number:04d}.csv").write_text(f"slice {number}\n")
    (tmp_path / "agent.pyz").write_bytes(b"PK zipapp")
    (tmp_path / "ca.crt").write_text("CA\n")
    return {
        "state": "present",
        "devices": [
            {"name": "pi-0001", "number": 1, "device_id": "0a:ed:9e:00:00:01"},
            {"name": "pi-0002", "number": 2, "device_id": "0A:ED:9E:00:00:02"},
        ],
        "slices_dir": str(tmp_path / "slices"),
        "passwords": {"pi-0001": "secret-1", "pi-0002": "secret-2"},
        "client_cert_dir": "",
        "environment": {"MQTT_BROKER": "edge-broker", "MQTT_PORT": "8883"},
        "pyz_src": str(tmp_path / "agent.pyz"),
        "ca_src": str(tmp_path / "ca.crt"),
        "unit_content": "[Service]\n",
        "unit": "/etc/systemd/system/edge-agent@.service",
        "install_dir": "/opt/edge-agent",
        "config_dir": "/etc/edge-agent",
        "state_dir": "/var/lib/edge-agent",
        "runtime_dir": "/run/edge-agent",
    }


# --- The controller's layout -------------------------------------------------------------


def test_each_device_gets_its_own_files_and_shares_only_zipapp_ca_and_unit(action, sources):
    bundle = action.build(sources)

    shared = {
        "/opt/edge-agent/edge-agent.pyz",
        "/etc/edge-agent/ca.crt",
        "/etc/systemd/system/edge-agent@.service",
    }
    one, two = (set(bundle.instances[n]) for n in ("pi-0001", "pi-0002"))
    assert one & two == shared
    assert one - shared == {
        "/opt/edge-agent/slices/pi-0001.csv",
        "/etc/edge-agent/devices/pi-0001.env",
    }
    assert bundle.files["/opt/edge-agent/slices/pi-0002.csv"][0] == b"slice 2\n"
    env, mode = bundle.files["/etc/edge-agent/devices/pi-0002.env"]
    assert mode == "0600"
    lines = env.decode().splitlines()
    assert "MQTT_USERNAME=pi-0002" in lines
    assert "MQTT_PASSWORD=secret-2" in lines
    assert "DEVICE_ID=0a:ed:9e:00:00:02" in lines
    assert "STATE_DIR=/var/lib/edge-agent/pi-0002" in lines
    assert "secret-1" not in env.decode()


def test_the_digest_follows_the_content(action, sources, tmp_path):
    before = action.build(sources).spec()
    (tmp_path / "slices" / "device-0002.csv").write_text("changed\n")
    after = action.build(sources).spec()

    changed = {path for path in before if before[path] != after[path]}
    assert changed == {"/opt/edge-agent/slices/pi-0002.csv"}
    data = (tmp_path / "slices" / "device-0002.csv").read_bytes()
    assert after["/opt/edge-agent/slices/pi-0002.csv"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_mutual_tls_hands_the_key_to_the_instance_only(action, sources, tmp_path):
    (tmp_path / "clients").mkdir()
    for suffix in ("crt", "key"):
        (tmp_path / "clients" / f"pi-0001.{suffix}").write_text(suffix)
        (tmp_path / "clients" / f"pi-0002.{suffix}").write_text(suffix)
    bundle = action.build({**sources, "client_cert_dir": str(tmp_path / "clients")})

    assert bundle.files["/etc/edge-agent/devices/pi-0001/client.key"][1] == "0600"
    env = bundle.files["/etc/edge-agent/devices/pi-0001.env"][0].decode()
    assert "MQTT_TLS_KEY=/run/edge-agent/pi-0001/client.key" in env


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "pi.0001"}, "device name 'pi.0001'"),
        ({"name": "a" * 21}, "at most 20 characters"),
        ({"device_id": "not-a-mac"}, "is not a MAC address"),
        ({"number": 9}, "cannot read slice"),
    ],
)
def test_bad_devices_fail_with_one_clear_message(action, sources, change, message):
    from ansible.errors import AnsibleActionFail

    device = {**sources["devices"][0], **change}
    with pytest.raises(AnsibleActionFail, match=message):
        action.build({**sources, "devices": [device]})


def test_a_value_systemd_would_misread_is_refused(action, sources):
    from ansible.errors import AnsibleActionFail

    with pytest.raises(AnsibleActionFail, match="MQTT_PASSWORD"):
        action.build({**sources, "passwords": {"pi-0001": 'a"b', "pi-0002": "x"}})


# --- The host's decisions ----------------------------------------------------------------


class FakeModule:
    """AnsibleModule's surface that run() uses; systemctl calls are recorded."""

    def __init__(self, params: dict[str, Any], active: set[str], check_mode: bool = False):
        self.params = params
        self.check_mode = check_mode
        self.active = active
        self.calls: list[list[str]] = []

    def run_command(self, argv: list[str], check_rc: bool = False) -> tuple[int, str, str]:
        self.calls.append(argv)
        if argv[:2] == ["systemctl", "is-active"]:
            states = ["active" if unit in self.active else "inactive" for unit in argv[2:]]
            return 0, "\n".join(states) + "\n", ""
        if argv[:2] == ["systemctl", "restart"]:
            self.active.update(argv[2:])
        return 0, "", ""


@pytest.fixture
def host(tmp_path: Path, remote: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "host"
    monkeypatch.setattr(remote, "WANTS_DIR", str(root / "wants"))
    monkeypatch.setattr(remote, "MODEL_FILE", str(root / "no-model"))
    return root


def module_params(action: ModuleType, sources: dict[str, Any], root: Path) -> dict[str, Any]:
    """The module's arguments for `sources`, with every path moved under `root`."""
    bundle = action.build(sources)
    moved = {path: str(root) + path for path in bundle.files}
    return {
        "state": sources["state"],
        "files": {
            moved[p]: {**spec, "owner": "root", "group": "root"}
            for p, spec in bundle.spec().items()
        },
        "contents": {},
        "instances": {n: [moved[p] for p in paths] for n, paths in bundle.instances.items()},
        "unit": moved[sources["unit"]],
        "directories": {str(root) + "/opt/edge-agent/slices": "0755"},
        "state_dir": str(root) + "/var/lib/edge-agent",
        "record": str(root) + "/etc/edge-agent/bundle.json",
        "pi_groups": [],
        "legacy_units": [],
        "legacy_files": [],
        "legacy_users": [],
        "_data": {moved[p]: data for p, (data, _) in bundle.files.items()},
    }


def install(
    remote: ModuleType, params: dict[str, Any], active: set[str]
) -> tuple[dict, FakeModule]:
    """Both calls, as the action makes them: ask what differs, then send exactly that."""
    import base64

    data = params.pop("_data")
    module = FakeModule(params, active)
    first = remote.run(module)
    if first.get("needs"):
        params["contents"] = {p: base64.b64encode(data[p]).decode() for p in first["needs"]}
        module = FakeModule(params, active)
        return remote.run(module), module
    return first, module


def restarts(module: FakeModule) -> list[list[str]]:
    return [call for call in module.calls if call[:2] == ["systemctl", "restart"]]


def test_first_install_writes_everything_and_restarts_once(action, remote, sources, host):
    params = module_params(action, sources, host)
    active: set[str] = set()

    result, module = install(remote, params, active)

    assert result["changed"]
    assert restarts(module) == [
        ["systemctl", "restart", "edge-agent@pi-0001.service", "edge-agent@pi-0002.service"]
    ]
    env = host / "etc/edge-agent/devices/pi-0001.env"
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    assert (host / "wants" / "edge-agent@pi-0002.service").is_symlink()
    assert json.loads((host / "etc/edge-agent/bundle.json").read_text())["instances"] == [
        "pi-0001",
        "pi-0002",
    ]


def test_unchanged_host_is_one_call_and_no_change(action, remote, sources, host):
    active: set[str] = set()
    install(remote, module_params(action, sources, host), active)

    params = module_params(action, sources, host)
    params.pop("_data")
    module = FakeModule(params, active)
    result = remote.run(module)

    assert not result["changed"]
    assert "needs" not in result
    assert module.calls == [["systemctl", "is-active", *sorted(active)]]


def test_only_the_instance_whose_slice_changed_restarts(action, remote, sources, host, tmp_path):
    active: set[str] = set()
    install(remote, module_params(action, sources, host), active)
    (tmp_path / "slices" / "device-0002.csv").write_text("new readings\n")

    result, module = install(remote, module_params(action, sources, host), active)

    assert result["differ"] == [str(host) + "/opt/edge-agent/slices/pi-0002.csv"]
    assert restarts(module) == [["systemctl", "restart", "edge-agent@pi-0002.service"]]


def test_a_changed_zipapp_restarts_every_instance_in_one_call(
    action, remote, sources, host, tmp_path
):
    active: set[str] = set()
    install(remote, module_params(action, sources, host), active)
    (tmp_path / "agent.pyz").write_bytes(b"PK new agent")

    _, module = install(remote, module_params(action, sources, host), active)

    assert len(restarts(module)) == 1
    assert len(restarts(module)[0]) == 4


def test_a_stopped_instance_is_started_without_rewriting(action, remote, sources, host):
    active: set[str] = set()
    install(remote, module_params(action, sources, host), active)
    active.discard("edge-agent@pi-0001.service")

    result, module = install(remote, module_params(action, sources, host), active)

    assert result["differ"] == []
    assert restarts(module) == [["systemctl", "restart", "edge-agent@pi-0001.service"]]


def test_removed_device_is_stopped_and_its_files_and_state_go(action, remote, sources, host):
    active: set[str] = set()
    install(remote, module_params(action, sources, host), active)
    state = host / "var/lib/private/edge-agent/pi-0002"
    state.mkdir(parents=True)
    (state / "state.json").write_text("{}")

    fewer = {**sources, "devices": sources["devices"][:1]}
    result, module = install(remote, module_params(action, fewer, host), active)

    assert result["removed_instances"] == ["pi-0002"]
    assert ["systemctl", "disable", "--now", "edge-agent@pi-0002.service"] in module.calls
    assert not (host / "etc/edge-agent/devices/pi-0002.env").exists()
    assert not (host / "opt/edge-agent/slices/pi-0002.csv").exists()
    assert not state.exists()
    assert (host / "etc/edge-agent/devices/pi-0001.env").exists()
    assert restarts(module) == []


def test_check_mode_reports_and_writes_nothing(action, remote, sources, host):
    params = module_params(action, sources, host)
    params.pop("_data")
    module = FakeModule(params, set(), check_mode=True)

    result = remote.run(module)

    assert result["changed"]
    assert len(result["differ"]) == len(params["files"])
    assert not os.path.exists(host)


def test_a_run_that_died_before_restarting_is_finished_by_the_next(
    action, remote, sources, host, tmp_path, monkeypatch
):
    active: set[str] = set()
    install(remote, module_params(action, sources, host), active)
    (tmp_path / "agent.pyz").write_bytes(b"PK new agent")

    # The files are written, then systemctl restart fails (the run dies there).
    params = module_params(action, sources, host)
    real_run_command = FakeModule.run_command

    def failing(self, argv, check_rc=False):
        if argv[:2] == ["systemctl", "restart"]:
            raise RuntimeError("connection lost")
        return real_run_command(self, argv, check_rc)

    monkeypatch.setattr(FakeModule, "run_command", failing)
    with pytest.raises(RuntimeError):
        install(remote, params, active)
    monkeypatch.setattr(FakeModule, "run_command", real_run_command)

    result, module = install(remote, module_params(action, sources, host), active)

    assert result["differ"] == []  # the files were already in place
    assert result["changed"]
    assert restarts(module) == [
        ["systemctl", "restart", "edge-agent@pi-0001.service", "edge-agent@pi-0002.service"]
    ]


def test_an_instance_restarting_on_its_own_is_not_a_change(action, remote, sources, host):
    active: set[str] = set()
    install(remote, module_params(action, sources, host), active)
    params = module_params(action, sources, host)
    params.pop("_data")
    module = FakeModule(params, active)
    module.run_command = lambda argv, check_rc=False: (  # type: ignore[method-assign]
        (3, "activating\nactive\n", "") if argv[1] == "is-active" else (0, "", "")
    )

    assert not remote.run(module)["changed"]


def test_the_single_device_layout_is_cleaned_up(action, remote, sources, host):
    legacy = host / "etc/edge-agent/agent.env"
    legacy.parent.mkdir(parents=True)
    legacy.write_text("MQTT_PASSWORD=old\n")
    params = module_params(action, sources, host)
    params["legacy_files"] = [str(legacy), str(host / "opt/edge-agent/slice.csv")]

    result, _ = install(remote, params, set())

    assert result["changed"]
    assert not legacy.exists()
    assert (host / "etc/edge-agent/devices/pi-0001.env").exists()


def test_absent_removes_only_what_it_installed(action, remote, sources, host):
    active: set[str] = set()
    install(remote, module_params(action, sources, host), active)
    foreign = host / "opt/edge-agent/README.local"
    foreign.write_text("not ours\n")

    params = module_params(action, {**sources, "state": "absent"}, host)
    params["files"], params["instances"] = {}, {}
    result, _ = install(remote, params, active)

    assert sorted(result["removed_instances"]) == ["pi-0001", "pi-0002"]
    assert foreign.exists()
    assert not (host / "etc/edge-agent/devices").exists()
    assert not (host / "etc/edge-agent/bundle.json").exists()


def test_instances_are_found_by_their_links_when_the_record_is_lost(action, remote, sources, host):
    active: set[str] = set()
    install(remote, module_params(action, sources, host), active)
    (host / "etc/edge-agent/bundle.json").unlink()

    fewer = {**sources, "devices": sources["devices"][:1]}
    result, module = install(remote, module_params(action, fewer, host), active)

    assert result["removed_instances"] == ["pi-0002"]
    assert ["systemctl", "disable", "--now", "edge-agent@pi-0002.service"] in module.calls
