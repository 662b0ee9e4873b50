"""Persistent agent state: STATE_DIR/state.json, written atomically (tmp + fsync + rename)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Optional

from .config import ConfigError

STATE_FILE = "state.json"


@dataclass(frozen=True)
class State:
    seq: int = 0  # next seq to (re)produce: lowest seq not yet acked or dropped
    cursor: int = 0  # slice row index for that seq
    overflow: int = 0  # readings dropped by queue overflow since the first start
    device_id: Optional[str] = None


def state_path(state_dir: str) -> str:
    return os.path.join(state_dir, STATE_FILE)


def load_state(state_dir: str) -> State:
    """Return the saved state, a fresh one if there is none; corrupt files are a ConfigError."""
    path = state_path(state_dir)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return State()
    except OSError as e:
        raise ConfigError("STATE_DIR", f"cannot read {path}: {e.strerror or e}") from None
    except ValueError:
        raise ConfigError(
            "STATE_DIR", f"{path} is corrupt (not JSON); fix or delete it to restart at seq 0"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError("STATE_DIR", f"{path} is corrupt (not a JSON object)")
    for key in ("seq", "cursor", "overflow"):
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError("STATE_DIR", f"{path} is corrupt ({key} must be an integer >= 0)")
    device_id = data.get("device_id")
    if device_id is not None and not isinstance(device_id, str):
        raise ConfigError("STATE_DIR", f"{path} is corrupt (device_id must be a string)")
    return State(
        seq=data.get("seq", 0),
        cursor=data.get("cursor", 0),
        overflow=data.get("overflow", 0),
        device_id=device_id,
    )


def save_state(state_dir: str, state: State) -> None:
    """Write atomically so that a crash or power cut leaves the old or the new file, never half."""
    os.makedirs(state_dir, exist_ok=True)
    path = state_path(state_dir)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(state), f, separators=(",", ":"))
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
