"""The fleet_credentials action's add, keep and revoke logic, and its file, in process."""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ansible") is None, reason="needs ansible-core"
)

ACTION = (
    Path(__file__).resolve().parents[2]
    / "roles"
    / "fleet_credentials"
    / "action_plugins"
    / "fleet_credentials.py"
)


@pytest.fixture(scope="module")
def action() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_credentials_action", ACTION)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_users_get_new_passwords_of_the_asked_length(action: ModuleType) -> None:
    creds, added, removed = action.reconcile({}, ["pi-0001", "consumer"], 24)
    assert added == ["pi-0001", "consumer"]
    assert removed == []
    assert list(creds) == ["pi-0001", "consumer"]
    assert all(len(p) == 24 for p in creds.values())
    assert creds["pi-0001"] != creds["consumer"]


def test_kept_users_keep_their_passwords(action: ModuleType) -> None:
    stored = {"pi-0001": "a" * 32, "consumer": "c" * 32}
    creds, added, removed = action.reconcile(stored, ["consumer", "pi-0001", "pi-0001"], 32)
    assert creds == {"consumer": "c" * 32, "pi-0001": "a" * 32}
    assert (added, removed) == ([], [])


def test_users_no_longer_wanted_are_revoked(action: ModuleType) -> None:
    stored = {f"pi-{n:04d}": f"secret-{n}" for n in range(1, 13)}
    wanted = [f"pi-{n:04d}" for n in range(1, 8)] + ["pi-0099"]
    creds, added, removed = action.reconcile(stored, wanted, 32)
    assert removed == [f"pi-{n:04d}" for n in range(8, 13)]
    assert added == ["pi-0099"]
    assert set(creds) == set(wanted)
    assert all(creds[u] == stored[u] for u in wanted if u in stored)
    assert not set(removed) & set(creds)


def test_file_round_trips_plain_with_mode_0600(action: ModuleType, tmp_path: Path) -> None:
    from ansible.parsing.vault import VaultLib

    path = tmp_path / "secrets" / "mqtt-credentials.yml"
    action.ActionModule._write(str(path), {"pi-0001": "p1", "consumer": "p2"}, None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    users, encrypted = action.ActionModule._read(str(path), VaultLib([]))
    assert users == {"pi-0001": "p1", "consumer": "p2"}
    assert not encrypted


def test_file_round_trips_vault_encrypted(action: ModuleType, tmp_path: Path) -> None:
    from ansible.parsing.vault import VaultLib, VaultSecret

    vault = VaultLib([("default", VaultSecret(b"correct horse"))])
    path = tmp_path / "creds.yml"
    action.ActionModule._write(str(path), {"admin": "s3cret"}, vault)
    assert path.read_bytes().startswith(b"$ANSIBLE_VAULT")
    assert b"s3cret" not in path.read_bytes()
    assert action.ActionModule._read(str(path), vault) == ({"admin": "s3cret"}, True)


def test_encrypted_file_without_a_vault_password_is_one_clear_error(
    action: ModuleType, tmp_path: Path
) -> None:
    from ansible.errors import AnsibleActionFail
    from ansible.parsing.vault import VaultLib, VaultSecret

    path = tmp_path / "creds.yml"
    vault = VaultLib([("default", VaultSecret(b"pw"))])
    action.ActionModule._write(str(path), {"admin": "x"}, vault)
    with pytest.raises(AnsibleActionFail, match="vault-encrypted but no vault password"):
        action.ActionModule._read(str(path), VaultLib([]))


def test_a_file_that_is_not_a_user_mapping_is_refused(action: ModuleType, tmp_path: Path) -> None:
    from ansible.errors import AnsibleActionFail
    from ansible.parsing.vault import VaultLib

    path = tmp_path / "creds.yml"
    path.write_text("mqtt_users: [a, b]\n")
    with pytest.raises(AnsibleActionFail, match="mapping 'mqtt_users'"):
        action.ActionModule._read(str(path), VaultLib([]))
