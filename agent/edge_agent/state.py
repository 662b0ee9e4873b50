"""Persistent agent state: STATE_DIR/state.json, written atomically (tmp + fsync + rename)."""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Optional

from .config import ConfigError
from .protocol import EPOCH_BITS

STATE_FILE = "state.json"


class State(NamedTuple):  # not a dataclass: dataclasses imports inspect (~1.5 MB of heap)
    seq: int = 0  # next seq to (re)produce: lowest seq not yet acked or dropped
    cursor: int = 0  # slice row index for that seq
    overflow: int = 0  # readings dropped by queue overflow since the first start
    device_id: Optional[str] = None
    # Names this run of seqs: picked when the agent starts without state (new_epoch()), so
    # that a consumer tells a wiped device starting again at seq 0 from duplicates.
    epoch: Optional[int] = None


def new_epoch() -> int:
    """A random epoch: EPOCH_BITS bits, exact as a JSON number everywhere (jq, JavaScript).

    Random, not a clock reading: a Pi has no real-time clock, and after a wipe it may boot
    with the same fake time as before."""
    return int.from_bytes(os.urandom(EPOCH_BITS // 8), "big")


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
    epoch = data.get("epoch")  # absent in files written before epochs existed
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
        raise ConfigError("STATE_DIR", f"{path} is corrupt (epoch must be an integer >= 0)")
    return State(
        seq=data.get("seq", 0),
        cursor=data.get("cursor", 0),
        overflow=data.get("overflow", 0),
        device_id=device_id,
        epoch=epoch,
    )


def save_state(state_dir: str, state: State) -> None:
    """Write atomically so that a crash or power cut leaves the old or the new file, never half."""
    path = state_path(state_dir)
    tmp = f"{path}.tmp"
    data = (json.dumps(state._asdict(), separators=(",", ":")) + "\n").encode()
    # os-level calls: this runs at every ack, and the fsync is already most of its CPU time.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileNotFoundError:
        os.makedirs(state_dir, exist_ok=True)
        fd = os.open(tmp, flags, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
