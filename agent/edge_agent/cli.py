"""edge-agent command line: parse config, set up logging and signals, run the agent."""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional

from .config import PROG, AgentConfig, ConfigError, load_config

if TYPE_CHECKING:
    from .dataset import Slice

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


def _error(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as e:
        return _error(str(e), EXIT_CONFIG)

    if not config.dry_run:  # before logging and paho import what it defers
        from .lean import defer_unused_imports

        defer_unused_imports(tls=bool(config.tls_ca))
    import logging

    # No timestamps: journald (or the test harness) adds its own.
    logging.basicConfig(
        level=config.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    from .dataset import read_slice

    try:
        readings = read_slice(config.dataset_path)
    except ConfigError as e:
        return _error(str(e), EXIT_CONFIG)
    try:
        return _run(config, readings)
    finally:
        readings.close()


def _run(config: AgentConfig, readings: Slice) -> int:
    from .agent import Agent, log

    if readings.skipped:
        log.warning("%s: skipped %d bad rows", config.dataset_path, readings.skipped)
    try:
        agent = Agent(config, readings)
    except ConfigError as e:
        return _error(str(e), EXIT_CONFIG)

    def stop(signum: int, frame: Any) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        agent.request_stop()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    pacing = (
        f"rate {config.rate}/s"
        if config.rate
        else f"replay speed x{config.replay_speed}"
        if config.replay_speed
        else f"interval {config.interval} s"
    )
    log.info(
        "device %s (%s): %d rows from %s, starting at seq %d row %d, %s, %s",
        config.device_id,
        config.device_name,
        len(readings),
        config.dataset_path,
        agent.next_seq,
        agent.next_row,
        pacing,
        "dry run" if config.dry_run else f"broker {config.broker}:{config.port} qos {config.qos}",
    )
    try:
        return agent.run()
    except BrokenPipeError:  # --dry-run piped into head & co.
        return EXIT_OK
    except Exception:
        log.exception("agent failed")
        return EXIT_RUNTIME
    finally:  # main() is also called in-process by tests
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
