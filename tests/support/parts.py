"""Run the parts of a test run in order and print how long each took, pass or fail.

    python tests/support/parts.py NAME -- COMMAND... [NAME -- COMMAND...]...

`make test` uses it so that the end of every run (CI's included) shows where the time went.
Stops at the first part that fails, and exits with its status.
"""

from __future__ import annotations

import subprocess
import sys
import time


def parse(argv: list[str]) -> list[tuple[str, list[str]]]:
    """NAME -- COMMAND... groups; a NAME starts wherever the previous command's `;;` ends."""
    parts: list[tuple[str, list[str]]] = []
    words = list(argv)
    while words:
        if len(words) < 3 or words[1] != "--":
            raise SystemExit(f"parts: expected NAME -- COMMAND..., got {' '.join(words[:3])!r}")
        name, words = words[0], words[2:]
        end = words.index(";;") if ";;" in words else len(words)
        parts.append((name, words[:end]))
        words = words[end + 1 :]
    return parts


def main(argv: list[str]) -> int:
    timings: list[tuple[str, float, int]] = []
    status = 0
    for name, command in parse(argv):
        print(f"=== {name}: {' '.join(command)}", flush=True)
        started = time.monotonic()
        status = subprocess.call(command)
        timings.append((name, time.monotonic() - started, status))
        if status != 0:
            break
    print("\n=== where the time went", flush=True)
    for name, seconds, code in timings:
        outcome = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{name:<24} {seconds / 60:6.1f} min  {outcome}")
    print(f"{'total':<24} {sum(t for _, t, _ in timings) / 60:6.1f} min", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
