#!/usr/bin/python
"""Reconcile the emulated fleet's containers with the inventory, in parallel."""

from __future__ import annotations

DOCUMENTATION = r"""
module: edge_fleet_hosts
short_description: Create, start, check and prune the emulated Pi containers of one fleet
description:
  - Makes the set of running containers labelled with I(fleet) equal to I(hosts).
  - Missing containers are created and started in parallel, stopped ones are started, and
    containers of the fleet that are not in I(hosts) are removed (this is how a smaller
    C(device_count) scales the fleet down).
  - Before anything is created it checks that the new containers and their devices fit in the
    controller's memory and pids limit, and that the network's bridge has a port for every
    container, and fails naming how many would fit. A failed check creates and removes nothing,
    and its result says so.
  - Waits until systemd inside each new container has finished booting.
  - Supports check mode.
options:
  fleet:
    description: Value of the C(org.edge-fleet.fleet) label that marks this fleet's containers.
    type: str
    required: true
  hosts:
    description:
      - Wanted containers. Each item has C(name), C(image), C(role) (broker, monitor or device), and
        optionally C(mac), C(platform), C(number), C(device_id), C(ports) (container port to
        host port on 127.0.0.1).
    type: list
    elements: dict
    default: []
  state:
    description: C(present) reconciles; C(absent) removes every container of the fleet.
    type: str
    choices: [present, absent]
    default: present
  network:
    description: Docker network the containers join.
    type: str
    required: true
  memory_per_host_mb:
    description: Memory budget for one container without its agents, used by the capacity check.
    type: int
    default: 90
  memory_per_device_mb:
    description: Memory budget for one device's agent, used by the capacity check.
    type: int
    default: 12
  max_containers_per_network:
    description:
      - Containers one network takes. A Linux bridge holds at most 1,024 ports; Docker's
        bridge network then takes a little less.
    type: int
    default: 1000
  pids_per_host:
    description: Process budget for one container, used by the capacity check.
    type: int
    default: 40
  parallelism:
    description: How many containers are created at once.
    type: int
    default: 16
  boot_timeout:
    description: Seconds to wait for systemd to finish booting in a new container.
    type: int
    default: 180
  ssh_public_key:
    description:
      - When set, every host runs sshd and user C(pi) accepts this key (key-only login), so that
        Ansible can reach the hosts over SSH like real Pis.
    type: str
"""

import concurrent.futures
import contextlib
import os
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule

try:
    import docker
    from docker.errors import DockerException, NotFound

    HAS_DOCKER = True
except ImportError:  # reported by main()
    HAS_DOCKER = False

LABEL_FLEET = "org.edge-fleet.fleet"
LABEL_ROLE = "org.edge-fleet.role"
LABEL_NUMBER = "org.edge-fleet.device-number"
LABEL_DEVICE_ID = "org.edge-fleet.device-id"
LABEL_DEVICES = "org.edge-fleet.devices"

# Each agent is one process; the budget leaves room for its ExecStartPre and a restart.
PIDS_PER_DEVICE = 2

# The flags that let systemd run as PID 1 without --privileged (CAP_SYS_RESOURCE is not
# available on these hosts, so --privileged fails).
SYSTEMD_RUN_ARGS: dict[str, Any] = {
    "cap_add": ["SYS_ADMIN"],
    "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
    "tmpfs": {"/run": "", "/run/lock": ""},
    "volumes": {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
    "cgroupns": "host",
    "stop_signal": "SIGRTMIN+3",
    "restart_policy": {"Name": "unless-stopped"},
}


def _meminfo_available_mb() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("MemAvailable missing from /proc/meminfo")


def _pids_headroom() -> int:
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as pid_max_file:
        pid_max = int(pid_max_file.read())
    running = sum(1 for entry in os.listdir("/proc") if entry.isdigit())
    return pid_max - running


def _devices(host: dict[str, Any]) -> int:
    return int(host.get("devices") or (1 if host.get("role") == "device" else 0))


def _running_agents(container: Any) -> int:
    result = container.exec_run(
        ["systemctl", "list-units", "edge-agent@*", "--state=active", "--plain", "--no-legend"]
    )
    return len(result.output.decode(errors="replace").split("\n")) - 1 if result.output else 0


def _added_devices(existing: dict[str, Any], wanted: dict[str, dict[str, Any]]) -> int:
    """Devices that running hosts are about to gain, which MemAvailable does not show yet.

    A container's label records its device count at creation and cannot change, so only hosts
    that want more than that are asked how many agents they run now.
    """
    added = 0
    for name, container in existing.items():
        if name not in wanted or container.status != "running":
            continue
        want = _devices(wanted[name])
        if want > int(container.labels.get(LABEL_DEVICES, want)):
            added += max(0, want - _running_agents(container))
    return added


def _capacity_error(
    new_hosts: list[dict[str, Any]], added_devices: int, containers: int, params: dict[str, Any]
) -> str | None:
    """Why the new hosts and devices do not fit, or None. Counts memory per host and per device."""
    new_devices = sum(_devices(h) for h in new_hosts) + added_devices
    if containers > params["max_containers_per_network"]:
        return (
            f"capacity: {containers} containers do not fit on one Docker network (a Linux bridge "
            f"holds 1,024 ports; the limit is {params['max_containers_per_network']}). Put more "
            "devices on each host with -e devices_per_host=K; nothing was created."
        )
    if not new_hosts and not new_devices:
        return None
    host_mb, device_mb = params["memory_per_host_mb"], params["memory_per_device_mb"]
    need_mb = len(new_hosts) * host_mb + new_devices * device_mb
    available_mb = _meminfo_available_mb()
    pids_needed = len(new_hosts) * params["pids_per_host"] + new_devices * PIDS_PER_DEVICE
    pids_free = _pids_headroom()
    if need_mb <= available_mb and pids_needed <= pids_free:
        return None
    per_device_mb = device_mb + host_mb / max(1, max((_devices(h) for h in new_hosts), default=1))
    fits = int(min(available_mb / per_device_mb, new_devices * pids_free / max(1, pids_needed)))
    limit = "memory" if need_mb > available_mb else "the pids limit"
    return (
        f"capacity: {len(new_hosts)} new emulated hosts with {new_devices} devices do not fit in "
        f"{limit} (need about {need_mb} MB of {available_mb} MB available: {host_mb} MB per "
        f"host and {device_mb} MB per device); about {fits} more devices would fit. Lower "
        "device_count, pack more devices per host (-e devices_per_host=K) or free resources; "
        "nothing was created."
    )


def _labels(fleet: str, host: dict[str, Any]) -> dict[str, str]:
    labels = {LABEL_FLEET: fleet, LABEL_ROLE: host["role"], LABEL_DEVICES: str(_devices(host))}
    if host.get("number") is not None:
        labels[LABEL_NUMBER] = str(host["number"])
    if host.get("device_id"):
        labels[LABEL_DEVICE_ID] = host["device_id"]
    return labels


def _wait_for_boot(container: Any, timeout: int) -> None:
    """Block until systemd reports the boot finished (running or degraded)."""
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        result = container.exec_run(["systemctl", "is-system-running"])
        state = result.output.decode(errors="replace").strip()
        if state in ("running", "degraded"):
            return
        # Each probe is a `docker exec` (a runc process): polling hard slows the boots it awaits.
        time.sleep(2)
    raise RuntimeError(f"{container.name}: systemd did not finish booting ({state})")


def _create(client: Any, fleet: str, network: str, host: dict[str, Any], timeout: int) -> None:
    ports = {f"{cport}/tcp": ("127.0.0.1", hport) for cport, hport in host.get("ports", {}).items()}
    container = client.containers.run(
        host["image"],
        name=host["name"],
        hostname=host["name"],
        detach=True,
        network=network,
        mac_address=host.get("mac"),
        platform=host.get("platform"),
        labels=_labels(fleet, host),
        ports=ports,
        **SYSTEMD_RUN_ARGS,
    )
    _wait_for_boot(container, timeout)


def _start(container: Any, timeout: int) -> None:
    container.start()
    _wait_for_boot(container, timeout)


# Installs the controller's key for `pi` and starts sshd; prints whether anything changed.
SSH_SETUP_SCRIPT = r"""
set -e
key="$1"; keys=/home/pi/.ssh/authorized_keys
if [ -f "$keys" ] && grep -qxF "$key" "$keys" && systemctl -q is-enabled ssh \
   && systemctl -q is-active ssh; then
    echo unchanged; exit 0
fi
install -d -m 0700 -o pi -g pi /home/pi/.ssh
printf '%s\n' "$key" > "$keys"
chown pi:pi "$keys"; chmod 0600 "$keys"
systemctl enable --now ssh.service >/dev/null 2>&1
echo changed
"""


def _setup_ssh(container: Any, public_key: str) -> bool:
    result = container.exec_run(["/bin/sh", "-c", SSH_SETUP_SCRIPT, "ssh-setup", public_key])
    output = result.output.decode(errors="replace").strip()
    if result.exit_code != 0:
        raise RuntimeError(f"{container.name}: could not set up sshd: {output}")
    return output.endswith("changed") and not output.endswith("unchanged")


def _leave_networks(containers: list[Any]) -> None:
    """Disconnect containers from their networks one at a time, before they are removed.

    Docker 20.10 keeps a per-network endpoint count that concurrent endpoint deletions can
    leave too high; the network then refuses removal ("has active endpoints") until the
    daemon restarts. Seen with 200 hosts force-removed 16 at a time, and reproduced with
    concurrent disconnects; one at a time, 200 take about 14 s.
    """
    for container in containers:
        for network in container.attrs.get("NetworkSettings", {}).get("Networks") or {}:
            with contextlib.suppress(DockerException):  # already gone: removal cleans up
                container.client.networks.get(network).disconnect(container, force=True)


def _remove(container: Any) -> None:
    container.remove(force=True, v=True)


def _run_parallel(jobs: list[tuple[str, Any, tuple[Any, ...]]], workers: int) -> list[str]:
    errors = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(func, *args): name for name, func, args in jobs}
        for future in concurrent.futures.as_completed(futures):
            try:
                future.result()
            except Exception as exc:  # collect every failure, not just the first
                errors.append(f"{futures[future]}: {exc}")
    return sorted(errors)


def reconcile(module: AnsibleModule, client: Any) -> dict[str, Any]:
    params = module.params
    fleet = params["fleet"]
    existing = {
        c.name: c
        for c in client.containers.list(all=True, filters={"label": f"{LABEL_FLEET}={fleet}"})
    }
    wanted = {h["name"]: h for h in params["hosts"]} if params["state"] == "present" else {}

    to_create = [h for name, h in wanted.items() if name not in existing]
    to_start = [
        existing[name] for name in wanted if name in existing and existing[name].status != "running"
    ]
    to_remove = [c for name, c in existing.items() if name not in wanted]
    result: dict[str, Any] = {
        "changed": bool(to_create or to_start or to_remove),
        "created": sorted(h["name"] for h in to_create),
        "started": sorted(c.name for c in to_start),
        "removed": sorted(c.name for c in to_remove),
    }
    if module.check_mode:
        return result

    added_devices = _added_devices(existing, wanted)
    capacity_error = _capacity_error(to_create, added_devices, len(wanted), params)
    if capacity_error:
        module.fail_json(
            msg=capacity_error,
            changed=False,
            created=[],
            started=[],
            removed=[],
            would_create=len(to_create),
        )

    timeout, workers, network = params["boot_timeout"], params["parallelism"], params["network"]
    _leave_networks(to_remove)
    jobs: list[tuple[str, Any, tuple[Any, ...]]] = [(c.name, _remove, (c,)) for c in to_remove]
    jobs += [(c.name, _start, (c, timeout)) for c in to_start]
    jobs += [(h["name"], _create, (client, fleet, network, h, timeout)) for h in to_create]
    errors = _run_parallel(jobs, workers) if jobs else []
    if errors:
        module.fail_json(
            msg=f"{len(errors)} emulated hosts failed: " + "; ".join(errors[:10]), **result
        )
    if params["ssh_public_key"] and wanted:
        result["ssh_configured"] = _configure_ssh(client, sorted(wanted), params)
        result["changed"] = result["changed"] or bool(result["ssh_configured"])
    return result


def _configure_ssh(client: Any, names: list[str], params: dict[str, Any]) -> list[str]:
    changed: list[str] = []
    errors: list[str] = []
    key = params["ssh_public_key"].strip()
    with concurrent.futures.ThreadPoolExecutor(max_workers=params["parallelism"]) as pool:
        futures = {pool.submit(_setup_ssh, client.containers.get(n), key): n for n in names}
        for future in concurrent.futures.as_completed(futures):
            try:
                if future.result():
                    changed.append(futures[future])
            except Exception as exc:
                errors.append(f"{futures[future]}: {exc}")
    if errors:
        raise RuntimeError("; ".join(sorted(errors)[:10]))
    return sorted(changed)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "fleet": {"type": "str", "required": True},
            "hosts": {"type": "list", "elements": "dict", "default": []},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "network": {"type": "str", "required": True},
            "memory_per_host_mb": {"type": "int", "default": 90},
            "memory_per_device_mb": {"type": "int", "default": 12},
            "max_containers_per_network": {"type": "int", "default": 1000},
            "pids_per_host": {"type": "int", "default": 40},
            "parallelism": {"type": "int", "default": 16},
            "boot_timeout": {"type": "int", "default": 180},
            "ssh_public_key": {"type": "str"},
        },
        supports_check_mode=True,
    )
    if not HAS_DOCKER:
        module.fail_json(
            msg="the docker Python SDK is required on the controller (pip install docker)"
        )
    for host in module.params["hosts"]:
        missing = {"name", "image", "role"} - set(host)
        if missing:
            module.fail_json(msg=f"hosts: item {host!r} lacks {', '.join(sorted(missing))}")
    try:
        client = docker.from_env(timeout=120)
        module.exit_json(**reconcile(module, client))
    except (DockerException, NotFound, RuntimeError, OSError) as exc:
        module.fail_json(msg=f"docker: {exc}")


if __name__ == "__main__":
    main()
