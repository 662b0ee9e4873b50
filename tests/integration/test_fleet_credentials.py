"""The fleet_credentials role through the real ansible-playbook CLI, on the controller only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = str(Path(sys.executable).parent / "ansible-playbook")

PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - role: fleet_credentials
      vars:
        fleet_credentials_file: "{{ credentials_file }}"
        fleet_credentials_users: "{{ devices.split(',') + ['consumer', 'admin'] }}"
  tasks:
    - name: Expose one password so that the test can compare runs
      ansible.builtin.copy:
        content: "{{ fleet_credentials_result.credentials | to_json }}"
        dest: "{{ credentials_file }}.seen"
        mode: "0600"
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    return tmp_path


def run(workdir: Path, devices: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        ANSIBLE_PLAYBOOK, "-v", str(workdir / "play.yml"), "-i", "localhost,",
        "-e", f"credentials_file={workdir}/secrets/creds.yml", "-e", f"devices={devices}",
        "-e", f"ansible_python_interpreter={sys.executable}", *extra,
    ]  # fmt: skip
    return subprocess.run(
        command,
        cwd=ROOT,
        text=True,
        capture_output=True,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_INVENTORY_ENABLED": "host_list"},
    )


def seen(workdir: Path) -> dict[str, str]:
    return yaml.safe_load((workdir / "secrets/creds.yml.seen").read_text())


def recap_changed(output: str) -> int:
    line = next(x for x in output.splitlines() if x.startswith("localhost") and "ok=" in x)
    return int(line.split("changed=")[1].split()[0])


def test_generates_once_keeps_and_revokes(workdir: Path) -> None:
    first = run(workdir, "pi-0001,pi-0002")
    assert first.returncode == 0, first.stdout + first.stderr
    creds = seen(workdir)
    assert sorted(creds) == ["admin", "consumer", "pi-0001", "pi-0002"]
    assert len(set(creds.values())) == 4 and all(len(p) == 32 for p in creds.values())
    stored = workdir / "secrets/creds.yml"
    assert stored.stat().st_mode & 0o777 == 0o600
    assert (workdir / "secrets").stat().st_mode & 0o777 == 0o700
    for password in creds.values():
        assert password not in first.stdout, "a password reached ansible-playbook -v output"

    again = run(workdir, "pi-0001,pi-0002")
    assert again.returncode == 0
    assert seen(workdir) == creds
    assert "added 0" not in again.stdout  # nothing to report: the report task is skipped

    shrunk = run(workdir, "pi-0001")
    assert shrunk.returncode == 0
    assert sorted(seen(workdir)) == ["admin", "consumer", "pi-0001"]
    assert "pi-0002" not in stored.read_text()
    assert seen(workdir)["pi-0001"] == creds["pi-0001"]


def test_scaling_a_packed_fleet_down_revokes_exactly_the_removed_devices(workdir: Path) -> None:
    # Device users are device names, whichever host runs them: 12 devices, then 7.
    twelve = [f"pi-{n:04d}" for n in range(1, 13)]
    first = run(workdir, ",".join(twelve))
    assert first.returncode == 0, first.stdout + first.stderr
    creds = seen(workdir)
    assert sorted(creds) == sorted([*twelve, "admin", "consumer"])
    shrunk = run(workdir, ",".join(twelve[:7]))
    assert shrunk.returncode == 0, shrunk.stdout + shrunk.stderr
    kept = seen(workdir)
    assert sorted(kept) == sorted([*twelve[:7], "admin", "consumer"])
    assert kept == {user: creds[user] for user in kept}, "a kept user's password changed"
    stored = (workdir / "secrets/creds.yml").read_text()
    assert not [user for user in twelve[7:] if user in stored]


def test_vault_encrypts_the_file_and_needs_the_password_to_read_it(workdir: Path) -> None:
    vault_pass = workdir / "vault-pass"
    vault_pass.write_text("correct horse battery staple\n")
    first = run(workdir, "pi-0001", "--vault-password-file", str(vault_pass))
    assert first.returncode == 0, first.stdout + first.stderr
    stored = workdir / "secrets/creds.yml"
    assert stored.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    creds = seen(workdir)
    assert creds["pi-0001"] not in stored.read_text()

    again = run(workdir, "pi-0001", "--vault-password-file", str(vault_pass))
    assert again.returncode == 0
    assert seen(workdir) == creds

    locked = run(workdir, "pi-0001")
    assert locked.returncode != 0
    assert "vault-encrypted but no vault password was given" in locked.stdout


def test_a_plaintext_file_is_encrypted_once_a_vault_password_exists(workdir: Path) -> None:
    assert run(workdir, "pi-0001").returncode == 0
    creds = seen(workdir)
    vault_pass = workdir / "vault-pass"
    vault_pass.write_text("s3cret\n")
    assert run(workdir, "pi-0001", "--vault-password-file", str(vault_pass)).returncode == 0
    assert (workdir / "secrets/creds.yml").read_text().startswith("$ANSIBLE_VAULT")
    assert seen(workdir) == creds


def test_a_broken_file_is_one_clear_error_and_is_left_alone(workdir: Path) -> None:
    stored = workdir / "secrets/creds.yml"
    stored.parent.mkdir()
    stored.write_text("mqtt_users: [not, a, mapping]\n")
    result = run(workdir, "pi-0001")
    assert result.returncode != 0
    assert "must hold a mapping 'mqtt_users'" in result.stdout
    assert stored.read_text() == "mqtt_users: [not, a, mapping]\n"


def test_a_bad_user_name_is_refused(workdir: Path) -> None:
    result = run(workdir, "pi:0001")
    assert result.returncode != 0
    assert "invalid user names" in result.stdout
    assert not (workdir / "secrets/creds.yml").exists()
