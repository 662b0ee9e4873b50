"""Filter: a Mosquitto password-file hash, computed on the controller.

`mosquitto_passwd` salts every hash at random, so a file it writes changes on every run. This
filter writes the same format (`$7$` = PBKDF2-HMAC-SHA512, as mosquitto_passwd does) with a salt
derived from the user and password, so the file changes only when a credential does and the
role stays idempotent. The salt still differs per user and per password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from ansible.errors import AnsibleFilterError

SALT_BYTES = 12  # what mosquitto_passwd uses
HASH_BYTES = 64  # SHA-512


def mosquitto_password_hash(password: str, username: str, iterations: int = 1000) -> str:
    """Return the `$7$...` entry that Mosquitto 2.x accepts in its password_file."""
    if not isinstance(password, str) or not password:
        raise AnsibleFilterError(f"mosquitto_password_hash: empty password for {username!r}")
    if not isinstance(username, str) or not username or ":" in username or "\n" in username:
        raise AnsibleFilterError(
            f"mosquitto_password_hash: {username!r} is not a valid Mosquitto user name "
            "(it must be non-empty, without ':' or newlines)"
        )
    if int(iterations) < 1:
        raise AnsibleFilterError("mosquitto_password_hash: iterations must be 1 or more")
    secret = password.encode()
    salt = hmac.new(secret, username.encode(), hashlib.sha256).digest()[:SALT_BYTES]
    digest = hashlib.pbkdf2_hmac("sha512", secret, salt, int(iterations), HASH_BYTES)
    encode = base64.b64encode
    return f"$7${int(iterations)}${encode(salt).decode()}${encode(digest).decode()}"


class FilterModule:
    def filters(self) -> dict[str, object]:
        return {"mosquitto_password_hash": mosquitto_password_hash}
