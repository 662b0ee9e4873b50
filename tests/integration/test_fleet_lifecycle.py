"""The main job end to end: site.yml on an emulated fleet, rerun, check mode, scale down, teardown.

Real Docker containers running systemd, the real ansible-playbook CLI, a real Mosquitto in the
broker container and the real consumer verifying the fleet.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fleet import (
    SERVICE_SECRETS,
    PlaybookRun,
    active_agents,
    agent_reports,
    agent_starts_since,
    agent_unit,
    ansible_playbook,
    device_env,
    docker,
    env_path,
    fleet_containers,
    fleet_layout,
    fleet_passwords,
    private_state_path,
    require_docker,
    slice_path,
    state_path,
    unit_show,
    write_emulated_inventory,
)

pytestmark = pytest.mark.fleet

NAME = "edge-itest"


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    require_docker()
    directory = write_emulated_inventory(
        tmp_path_factory.mktemp("inventory") / "emulated",
        NAME,
    )
    args = ["-i", str(directory)]
    yield args
    ansible_playbook("playbooks/teardown.yml", *args)


def site(inventory: list[str], count: int, *extra: str) -> PlaybookRun:
    return ansible_playbook("site.yml", *inventory, "-e", f"device_count={count}", *extra)


def devices() -> list[str]:
    return [name for name in fleet_containers(NAME) if "-pi-" in name]


def test_deploy_from_nothing_ends_verified(inventory: list[str]) -> None:
    run = site(inventory, 4)
    assert run.rc == 0, run.output[-3000:]
    assert "fleet check met: 4 of 4" in run.output
    assert devices() == [f"{NAME}-pi-000{n}" for n in range(1, 5)]
    # One device per host: each host carries its device's name and runs that one instance.
    layout = fleet_layout(inventory, "-e", "device_count=4")
    assert {host: [d["name"] for d in ds] for host, ds in layout.items()} == {
        name: [name] for name in devices()
    }
    for name in devices():
        assert active_agents(name) == [name], name
        assert (
            docker("exec", name, "systemctl", "is-enabled", agent_unit(name)).strip() == "enabled"
        )


def test_rerun_changes_nothing(inventory: list[str]) -> None:
    run = site(inventory, 4)
    assert run.rc == 0, run.output[-3000:]
    assert run.total("changed") == 0, run.recap()
    assert len(run.recap()) == 6  # localhost, the broker and 4 devices


def test_check_mode_runs_clean_against_the_fleet(inventory: list[str]) -> None:
    run = site(inventory, 4, "--check")
    assert run.rc == 0, run.output[-3000:]
    assert run.total("changed") == 0, run.recap()


def test_changed_agent_setting_restarts_each_agent_once(inventory: list[str]) -> None:
    before = {name: unit_show(name, name, "InvocationID", "NRestarts") for name in devices()}
    started = time.time()
    run = site(inventory, 4, "-e", "edge_agent_publish_interval=2.0")
    assert run.rc == 0, run.output[-3000:]
    # The role's own account: on every host, its one agent restarted and nothing removed.
    reports = {
        host: (r.restarted, r.agents, r.removed) for host, r in agent_reports(run.output).items()
    }
    assert reports == {name: (1, 1, []) for name in devices()}, reports
    for name in devices():
        assert run.recap()[name]["changed"] >= 1, run.recap()
        # systemd's account: started exactly once since the run began, by request, not a crash.
        assert agent_starts_since(name, name, started) == 1, name
        after = unit_show(name, name, "InvocationID", "NRestarts", "ActiveState")
        assert after["InvocationID"] != before[name]["InvocationID"], name
        assert after["NRestarts"] == before[name]["NRestarts"], name
        assert after["ActiveState"] == "active", name
        assert device_env(name, name)["PUBLISH_INTERVAL"] == "2.0", name


def test_scale_down_leaves_exactly_n_publishing(inventory: list[str]) -> None:
    run = site(inventory, 2)
    assert run.rc == 0, run.output[-3000:]
    assert devices() == [f"{NAME}-pi-0001", f"{NAME}-pi-0002"]
    assert "fleet check met: 2 of 2" in run.output
    # The removed devices' MQTT users are revoked.
    assert sorted(fleet_passwords(NAME)) == sorted([*SERVICE_SECRETS, *devices()])


DEVICE = f"{NAME}-pi-0001"  # one device per host: its host carries the same name
BAD_AGENT_CONFIG = {
    # name: (shell command run on the device, text the journal must show)
    "bad-port": (f"sed -i 's/^MQTT_PORT=.*/MQTT_PORT=99999/' {env_path(DEVICE)}", "MQTT_PORT"),
    "bad-qos": (f"sed -i 's/^QOS=.*/QOS=7/' {env_path(DEVICE)}", "QOS"),
    "missing-slice": (
        f"mv {slice_path(DEVICE)} {slice_path(DEVICE)}.away",
        slice_path(DEVICE).rsplit("/", 1)[1],
    ),
    "unreadable-state": (
        f"cd {state_path(DEVICE)} && chown root:root state.json && chmod 0600 state.json",
        "state.json",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_AGENT_CONFIG))
def test_agent_config_error_stops_the_service_without_a_crash_loop(
    inventory: list[str], case: str
) -> None:
    command, named = BAD_AGENT_CONFIG[case]
    unit = agent_unit(DEVICE)

    def on_device(script: str) -> str:
        return docker("exec", DEVICE, "bash", "-c", script)

    env, slice_csv, state = env_path(DEVICE), slice_path(DEVICE), private_state_path(DEVICE)
    backup = f"cp -a {env} /root/device.env.bak"
    restore = (
        f"cp -a /root/device.env.bak {env};"
        f" {{ [ ! -e {slice_csv}.away ] || mv {slice_csv}.away {slice_csv}; }};"
        # The state file belongs to the instance's dynamic user, who owns its directory.
        f" chown --reference={state} {state}/state.json;"
        f" systemctl reset-failed {unit}; systemctl restart {unit}"
    )
    # Stopped first: on SIGTERM the agent rewrites its state file, which would undo the damage.
    on_device(f"{backup} && systemctl stop {unit} && {command} && systemctl start {unit}")
    try:
        time.sleep(8)  # several RestartSec periods: a crash loop would show restarts
        status = on_device(f"systemctl show -p ActiveState -p ExecMainStatus -p NRestarts {unit}")
        journal = on_device(f"journalctl -u {unit} -n 20 --no-pager -o cat")
        assert "ActiveState=failed" in status, status
        assert "ExecMainStatus=2" in status, status
        assert "NRestarts=0" in status, status
        assert named in journal, journal
    finally:
        on_device(restore + "; true")
    assert "ActiveState=active" in on_device(f"sleep 2; systemctl show -p ActiveState {unit}")


def test_teardown_leaves_no_fleet_containers(inventory: list[str]) -> None:
    run = ansible_playbook("playbooks/teardown.yml", *inventory)
    assert run.rc == 0, run.output[-3000:]
    assert fleet_containers(NAME) == []


@pytest.mark.parametrize("count", ["0", "-3", "abc", "2.5", "100000"])
def test_bad_device_count_fails_before_any_host_is_touched(tmp_path: Path, count: str) -> None:
    require_docker()
    name = "edge-badcount"
    directory = write_emulated_inventory(tmp_path / "emulated", name)
    run = ansible_playbook("site.yml", "-i", str(directory), "-e", f"device_count={count}")
    assert run.rc != 0
    assert f"device_count must be a whole number from 1 to 10000, got '{count}'" in run.output
    assert fleet_containers(name) == []


HEADER = "ts,device,co,humidity,light,lpg,motion,smoke,temp\n"
ROW = "1594512094.38,{mac},0.004,51.0,false,0.007,false,0.02,22.7\n"
MACS = ["00:0f:00:70:91:0a", "1c:bf:ce:15:ec:4d", "b8:27:eb:bf:9d:51"]
BAD_DATASETS = {
    "missing": (None, "cannot read: No such file or directory"),
    "empty": ("", "file is empty"),
    "wrong-header": ("a,b,c\n1,2,3\n", "header lacks columns"),
    "non-numeric": (
        HEADER
        + "".join(ROW.format(mac=m) for m in MACS)
        + ROW.format(mac=MACS[0]).replace("51.0", "wet"),
        "line 5: column 'humidity' is 'wet' not a finite number",
    ),
    "one-device": (HEADER + ROW.format(mac=MACS[0]) * 3, "expected 3 source devices, found 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_dataset_fails_before_any_host_is_touched(tmp_path: Path, case: str) -> None:
    require_docker()
    content, message = BAD_DATASETS[case]
    dataset = tmp_path / "dataset.csv"
    if content is not None:
        dataset.write_text(content)
    name = "edge-baddata"
    directory = write_emulated_inventory(tmp_path / "emulated", name)
    run = ansible_playbook(
        "site.yml", "-i", str(directory), "-e", f"fleet_dataset_source={dataset}"
    )
    assert run.rc != 0
    assert message in run.output, run.output[-2000:]
    assert fleet_containers(name) == []


@pytest.mark.parametrize(
    ("variable", "message"),
    [
        (
            "emulated_hosts_state=gone",
            "value of emulated_hosts_state must be one of: present, absent",
        ),
        ("emulated_hosts_boot_timeout=soon", "emulated_hosts_boot_timeout"),
    ],
)
def test_bad_role_variable_fails_before_any_host_is_touched(
    tmp_path: Path, variable: str, message: str
) -> None:
    require_docker()
    name = "edge-badvar"
    directory = write_emulated_inventory(tmp_path / "emulated", name)
    run = ansible_playbook("site.yml", "-i", str(directory), "-e", variable)
    assert run.rc != 0
    assert message in run.output, run.output[-2000:]
    assert fleet_containers(name) == []
