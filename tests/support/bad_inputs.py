"""Bad inputs the fleet must refuse before any host is touched, and the message each must give.

One table for the in-process tests (tests/unit) and the end-to-end site.yml refusals
(tests/integration), so both assert the same texts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

HEADER = "ts,device,co,humidity,light,lpg,motion,smoke,temp\n"
ROW = "1594512094.38,{mac},0.004,51.0,false,0.007,false,0.02,22.7\n"
MACS = ["00:0f:00:70:91:0a", "1c:bf:ce:15:ec:4d", "b8:27:eb:bf:9d:51"]

# case: (the file's content, None for no file at all; text the refusal must show)
BAD_DATASETS: dict[str, tuple[Optional[str], str]] = {
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


def write_bad_dataset(directory: Path, case: str) -> Path:
    """The path of BAD_DATASETS[case] under `directory` (written unless the case is no file)."""
    content, _ = BAD_DATASETS[case]
    path = directory / "dataset.csv"
    if content is not None:
        path.write_text(content)
    return path


# (-e NAME=VALUE as given on the command line, text the refusal must show)
BAD_ROLE_VARIABLES: list[tuple[str, str]] = [
    ("emulated_hosts_state=gone", "value of emulated_hosts_state must be one of: present, absent"),
    ("emulated_hosts_boot_timeout=soon", "emulated_hosts_boot_timeout"),
]
