"""A bad dataset stops site.yml's first play: role fleet_artifacts' slicer command, in process.

The role's task "Cut one dataset slice per device" runs `edge-dataset slice` with an argv it
templates from the role's variables; a non-zero exit fails the task, and Ansible shows the
command's stderr. Here the role's own argv is templated by Ansible's Templar and handed to the
console script's entry point in this process, so a change to the task's command line is tested
too. (ansible-playbook playbooks/artifacts.yml takes about 7 s per dataset, mostly building the
zipapps first; this takes well under a second.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Optional, cast

import pytest
import yaml
from support.bad_inputs import BAD_DATASETS, HEADER, MACS, ROW, write_bad_dataset
from support.fleet import ROOT

pytest.importorskip("ansible")

TASKS = ROOT / "roles" / "fleet_artifacts" / "tasks" / "main.yml"
SLICE_TASK = "Cut one dataset slice per device"
DEVICES = 3  # the default emulated inventory's device_count


def slice_argv(out_dir: Path, dataset: Path) -> list[str]:
    """The argv the role's slicer task runs, templated by Ansible as the play would."""
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar, trust_as_template

    tasks = yaml.safe_load(TASKS.read_text())
    (task,) = [task for task in tasks if task.get("name") == SLICE_TASK]
    variables = {
        # As playbooks/artifacts.yml passes them: templated, so strings.
        "fleet_artifacts_device_count": str(DEVICES),
        "fleet_artifacts_dir": str(out_dir),
        "fleet_artifacts_dataset_source": str(dataset),
        "ansible_check_mode": False,
    }
    templar = Templar(loader=DataLoader(), variables=variables)
    argv = templar.template(trust_as_template(task["ansible.builtin.command"]["argv"]))
    return [str(arg) for arg in argv]


def console_script(name: str) -> Callable[[Optional[Sequence[str]]], int]:
    """The function the installed console script `name` calls."""
    (entry,) = entry_points(group="console_scripts", name=name)
    return cast("Callable[[Optional[Sequence[str]]], int]", entry.load())


def run_slicer_task(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """Run the role's slicer command in process; return its exit code and stderr."""
    argv = slice_argv(tmp_path / "artifacts", dataset)
    code = console_script(argv[0])(argv[1:])
    return code, capsys.readouterr().err


def test_the_slicer_task_passes_the_dataset_source_to_edge_dataset(tmp_path: Path) -> None:
    argv = slice_argv(tmp_path, tmp_path / "data.csv")

    assert argv == [
        "edge-dataset",
        "slice",
        "--json",
        "--devices",
        str(DEVICES),
        "--out",
        f"{tmp_path}/slices",
        "--source",
        f"{tmp_path}/data.csv",
    ]


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_dataset_fails_the_slicer_task_with_one_clear_message_and_writes_nothing(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = write_bad_dataset(tmp_path, case)
    _, message = BAD_DATASETS[case]

    code, stderr = run_slicer_task(tmp_path, dataset, capsys)

    assert code == 2
    # One line: the program, the file, then the reason, which starts with the expected text.
    assert stderr.startswith(f"edge-dataset: error: {dataset}: {message}"), stderr
    assert stderr.count("\n") == 1, stderr
    assert not (tmp_path / "artifacts").exists()


def test_good_dataset_passes_the_same_slicer_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The bad cases fail for their own reasons: rows like theirs, all valid, slice fine.
    dataset = tmp_path / "dataset.csv"
    dataset.write_text(HEADER + "".join(ROW.format(mac=mac) for mac in MACS))

    code, stderr = run_slicer_task(tmp_path, dataset, capsys)

    assert code == 0, stderr
    assert sorted(p.name for p in (tmp_path / "artifacts" / "slices").iterdir()) == [
        "device-0001.csv",
        "device-0002.csv",
        "device-0003.csv",
        "manifest.json",
    ]
