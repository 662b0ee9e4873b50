"""Time the edge_fleet inventory plugin with a large fleet.

Prints three numbers for the same device count:

* parse: `InventoryModule.parse()` alone, in-process, as the inventory manager calls it;
* manager: building an `InventoryManager` (parse plus vars plugins and reconciling), which
  is what every `ansible-playbook` run pays before its first task;
* cli: wall time of `ansible-inventory -i inventories/emulated --list -e device_count=N`,
  which also resolves every host's variables and serialises them to JSON.

Usage: python bench/inventory_speed.py [--devices 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIR = ROOT / "inventories" / "emulated"
SOURCE = SOURCE_DIR / "fleet.edge_fleet.yml"
ENV = {
    "ANSIBLE_INVENTORY_PLUGINS": str(ROOT / "plugins" / "inventory"),
    "ANSIBLE_INVENTORY_ENABLED": "edge_fleet,host_list,yaml,ini,auto",
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
}
# Ansible reads its configuration at import time, so set the environment first.
os.environ.update(ENV)

from ansible import context  # noqa: E402
from ansible.inventory.data import InventoryData  # noqa: E402
from ansible.inventory.manager import InventoryManager  # noqa: E402
from ansible.module_utils.common.collections import ImmutableDict  # noqa: E402
from ansible.parsing.dataloader import DataLoader  # noqa: E402
from ansible.plugins.loader import inventory_loader  # noqa: E402


def time_parse(devices: int) -> float:
    """Seconds for one plugin.parse() on a fresh inventory, wrapped as the manager wraps it."""
    plugin = inventory_loader.get("edge_fleet")
    inventory = InventoryData()
    inventory.current_source = str(SOURCE)
    target = inventory
    try:  # ansible-core >= 2.19 passes plugins a proxy that tags every variable
        from ansible._internal._datatag._tags import Origin
        from ansible.inventory.manager import _InventoryDataWrapper

        origin = Origin(description=f"<inventory plugin 'edge_fleet' with source {str(SOURCE)!r}>")
        target = _InventoryDataWrapper(inventory, target_plugin=plugin, origin=origin)
    except ImportError:
        pass
    start = time.perf_counter()
    plugin.parse(target, DataLoader(), str(SOURCE), cache=False)
    elapsed = time.perf_counter() - start
    hosts = len(inventory.groups["devices"].get_hosts())
    if hosts != devices:
        sys.exit(f"expected {devices} devices, parse built {hosts}")
    return elapsed


def time_manager() -> float:
    start = time.perf_counter()
    InventoryManager(loader=DataLoader(), sources=[str(SOURCE_DIR)])
    return time.perf_counter() - start


def time_cli(devices: int) -> float:
    command = [
        "ansible-inventory",
        "-i",
        str(SOURCE_DIR),
        "--list",
        "-e",
        f"device_count={devices}",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **ENV})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    context.CLIARGS = ImmutableDict(extra_vars=(f"device_count={args.devices}",))
    parse = min(time_parse(args.devices) for _ in range(args.repeat))
    manager = min(time_manager() for _ in range(args.repeat))
    cli = min(time_cli(args.devices) for _ in range(args.repeat))
    print(f"devices={args.devices} (best of {args.repeat})")
    print(f"parse    {parse:6.3f} s  plugin.parse() in-process")
    print(f"manager  {manager:6.3f} s  InventoryManager build (what ansible-playbook pays)")
    print(f"cli      {cli:6.3f} s  ansible-inventory --list, incl. startup and JSON output")


if __name__ == "__main__":
    main()
