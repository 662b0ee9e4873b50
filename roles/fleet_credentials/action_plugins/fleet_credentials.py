"""Action: keep the fleet's MQTT credentials in one file on the controller.

Runs on the controller only. Users that are wanted and missing get a random password; users
that are no longer wanted are removed (that revokes them at the broker). When Ansible has a
vault secret (--vault-password-file, ANSIBLE_VAULT_PASSWORD_FILE, --ask-vault-pass...), the
file is written vault-encrypted; an existing plaintext file is encrypted on the next run.
The result carries the passwords under `credentials`: register it with no_log.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from typing import Any

import yaml
from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.parsing.vault import VaultLib, is_encrypted
from ansible.plugins.action import ActionBase

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
HEADER = (
    "# MQTT credentials of the edge fleet, written by the fleet_credentials role.\n"
    "# Keep it out of version control. Delete a line to rotate that password on the next run.\n"
)

ARGUMENT_SPEC = {
    "path": {"type": "path", "required": True},
    "users": {"type": "list", "elements": "str", "required": True},
    "length": {"type": "int", "default": 32},
    "encrypt": {"type": "bool", "default": True},
}


def reconcile(
    stored: dict[str, str], users: list[str], length: int
) -> tuple[dict[str, str], list[str], list[str]]:
    """Keep the passwords of wanted users, add the missing ones, revoke the rest.

    Returns (credentials in the wanted order, users added, users revoked).
    """
    wanted = list(dict.fromkeys(str(user) for user in users))
    credentials = {u: stored[u] for u in wanted if u in stored}
    added = [u for u in wanted if u not in stored]
    for user in added:
        credentials[user] = secrets.token_urlsafe(length)[:length]
    removed = sorted(set(stored) - set(wanted))
    return credentials, added, removed


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        bad = [u for u in args["users"] if not USERNAME_RE.match(u)]
        if bad:
            raise AnsibleActionFail(
                f"fleet_credentials: invalid user names {bad[:5]}: use letters, digits, '.', '_',"
                " '@' and '-' (no ':'), at most 64 characters"
            )
        if args["length"] < 16:
            raise AnsibleActionFail("fleet_credentials: length must be 16 or more")

        # Plain str: ansible-core 2.19 tags its strings, and yaml.safe_dump refuses those.
        path = str(args["path"])
        vault = VaultLib(self._loader._vault.secrets or [])  # the CLI's vault secrets, if any
        stored, was_encrypted = self._read(path, vault)
        credentials, added, removed = reconcile(stored, args["users"], args["length"])
        encrypt = bool(args["encrypt"] and vault.secrets)
        changed = bool(added or removed) or (encrypt and not was_encrypted)

        if changed and not self._task.check_mode:
            self._write(path, credentials, vault if encrypt else None)
        result.update(
            changed=changed,
            added=added,
            removed=removed,
            encrypted=encrypt or was_encrypted,
            path=path,
            credentials=credentials,
        )
        return result

    @staticmethod
    def _read(path: str, vault: VaultLib) -> tuple[dict[str, str], bool]:
        if not os.path.exists(path):
            return {}, False
        with open(path, "rb") as handle:
            raw = handle.read()
        encrypted = is_encrypted(raw)
        if encrypted:
            if not vault.secrets:
                raise AnsibleActionFail(
                    f"fleet_credentials: {path} is vault-encrypted but no vault password was given"
                    " (use --vault-password-file, ANSIBLE_VAULT_PASSWORD_FILE or --ask-vault-pass)"
                )
            try:
                raw = vault.decrypt(raw)
            except AnsibleError as exc:
                raise AnsibleActionFail(f"fleet_credentials: cannot decrypt {path}: {exc}") from exc
        try:
            data = yaml.safe_load(to_text(raw, errors="surrogate_or_strict")) or {}
        except yaml.YAMLError as exc:
            raise AnsibleActionFail(f"fleet_credentials: {path} is not valid YAML: {exc}") from exc
        users = data.get("mqtt_users") if isinstance(data, dict) else None
        if not isinstance(users, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in users.items()
        ):
            raise AnsibleActionFail(
                f"fleet_credentials: {path} must hold a mapping 'mqtt_users' of user name to"
                " password; fix or delete the file (deleting it issues new passwords)"
            )
        return users, encrypted

    @staticmethod
    def _write(path: str, credentials: dict[str, str], vault: VaultLib | None) -> None:
        text = HEADER + yaml.safe_dump({"mqtt_users": credentials}, default_flow_style=False)
        data = vault.encrypt(to_bytes(text)) if vault else to_bytes(text)
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Written whole and renamed, so a crash never leaves half a file; 0600 from the start.
        fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".credentials.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp_path, path)
        except BaseException:
            os.unlink(tmp_path)
            raise
