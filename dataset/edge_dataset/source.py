"""Which dataset file to use when --source is not given."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .replica import DEFAULT_SEED, marker_digest, write_replica

ENV = "EDGE_DATASET_SOURCE"
REAL_DEFAULT = Path("data/iot_telemetry_data.csv")
REPLICA_DEFAULT = Path(".cache/dataset/replica.csv")


@dataclass(frozen=True)
class Source:
    path: Path
    why: str  # how it was chosen, for the log line


def resolve(explicit: str | None) -> Source:
    """--source, else $EDGE_DATASET_SOURCE, else ./data/iot_telemetry_data.csv, else the replica."""
    if explicit:
        return Source(Path(explicit), "--source")
    from_env = os.environ.get(ENV, "").strip()
    if from_env:
        return Source(Path(from_env), f"${ENV}")
    if REAL_DEFAULT.exists():
        return Source(REAL_DEFAULT, "default real file")
    if not _replica_intact(REPLICA_DEFAULT):
        write_replica(REPLICA_DEFAULT, DEFAULT_SEED)
        return Source(REPLICA_DEFAULT, f"SYNTHETIC replica generated (seed {DEFAULT_SEED})")
    return Source(REPLICA_DEFAULT, "cached SYNTHETIC replica")


def _replica_intact(path: Path) -> bool:
    digest = marker_digest(path)
    try:
        return digest is not None and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False
