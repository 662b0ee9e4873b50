#!/usr/bin/env python3
"""Run every benchmark in bench/ in turn; each prints its own numbers.

The fleet benchmarks start containers and are run on their own: `bench/fleet_scale.py --devices
200` (tens of minutes) and `bench/arch_deploy.py` (arm64 against amd64, a few minutes). So is
`bench/consumer_store.py` (the consumer with a store and the anomaly detectors against plain,
paired rounds, a private PostgreSQL cluster too: about 3 minutes with its defaults).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
QUICK = ["inventory_speed.py", "slicer_speed.py", "agent_memory.py", "consumer_throughput.py"]


def main() -> int:
    failed = []
    for script in QUICK:
        print(f"==> {script}", flush=True)
        if subprocess.run([sys.executable, str(BENCH / script)]).returncode != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
