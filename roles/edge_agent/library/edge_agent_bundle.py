#!/usr/bin/python
"""Install the agents of one host: shared files, each device's own files, a unit instance each."""

from __future__ import annotations

DOCUMENTATION = r"""
module: edge_agent_bundle
short_description: Install the edge agents of one host atomically and restart only what changed
description:
  - The remote half of the C(edge_agent_bundle) action, which computes I(files) and I(instances)
    on the controller. Use the action, not this module.
  - Compares each file's SHA-256, mode and owner with I(files). Without I(contents) it only
    reports which files differ (C(needs)); with them it writes those files (each to a temporary
    name, then renamed), removes the files and instances no longer wanted, and restarts, in one
    C(systemctl) call, exactly the instances whose inputs changed or that are not running.
  - Supports check mode.
options:
  state:
    description: C(present) installs; C(absent) stops every instance and removes every file.
    type: str
    choices: [present, absent]
    default: present
  files:
    description: Wanted files, path to C(sha256), C(mode) (octal string), C(owner), C(group).
    type: dict
    default: {}
  contents:
    description: Base64 contents of the files to write, path to text; only for files that differ.
    type: dict
    default: {}
  instances:
    description: Wanted unit instances, instance name to the list of paths it depends on.
    type: dict
    default: {}
  unit:
    description: Path of the template unit, e.g. /etc/systemd/system/edge-agent@.service.
    type: path
    required: true
  directories:
    description: Directories to create (path to mode, owned by root).
    type: dict
    default: {}
  state_dir:
    description: Base of the instances' state directories (StateDirectory=); a removed instance
      loses its state here and under the C(private/) directory that DynamicUser uses.
    type: path
    required: true
  record:
    description: File where the module records the instances and files it manages.
    type: path
    required: true
  pi_groups:
    description: Extra groups for the agents on a real Raspberry Pi (detected from the device
      tree); only groups that exist are used.
    type: list
    elements: str
    default: []
  legacy_units:
    description: Units of older layouts to stop, disable and remove.
    type: list
    elements: path
    default: []
  legacy_files:
    description: Files and directories of older layouts to remove (old secrets among them).
    type: list
    elements: path
    default: []
  legacy_users:
    description: Static users of older layouts to remove.
    type: list
    elements: str
    default: []
"""

import base64
import grp
import hashlib
import json
import os
import pwd
import shutil
import tempfile

from ansible.module_utils.basic import AnsibleModule

WANTS_DIR = "/etc/systemd/system/multi-user.target.wants"
MODEL_FILE = "/proc/device-tree/model"


def sha256_of(path):
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 16), b""):
                digest.update(block)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def file_matches(path, spec):
    if sha256_of(path) != spec["sha256"]:
        return False
    info = os.stat(path)
    return (
        info.st_mode & 0o7777 == int(spec["mode"], 8)
        and info.st_uid == pwd.getpwnam(spec.get("owner", "root")).pw_uid
        and info.st_gid == grp.getgrnam(spec.get("group", "root")).gr_gid
    )


def write_atomically(path, data, spec):
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".edge-agent-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chown(
            tmp,
            pwd.getpwnam(spec.get("owner", "root")).pw_uid,
            grp.getgrnam(spec.get("group", "root")).gr_gid,
        )
        os.chmod(tmp, int(spec["mode"], 8))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_record(path):
    """(instances, files, applied) from the record; applied maps an instance to the digest of
    the inputs it was last (re)started with."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return (
            list(data.get("instances", [])),
            list(data.get("files", [])),
            dict(data.get("applied", {})),
        )
    except (FileNotFoundError, ValueError, AttributeError):
        return [], [], {}


def inputs_digest(paths, files, extra=""):
    """One digest of everything an instance reads, from the wanted files' digests."""
    digest = hashlib.sha256(extra.encode())
    for path in sorted(paths):
        digest.update(f"{path}={files[path]['sha256']}".encode())
    return digest.hexdigest()


def remove_path(path):
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def prune_empty_dirs(paths, keep):
    """Remove the directories of `paths` that are now empty, deepest first, except `keep`."""
    parents = {os.path.dirname(p) for p in paths}
    for parent in sorted(parents, key=len, reverse=True):
        while parent not in keep and parent not in ("", "/") and os.path.isdir(parent):
            if os.listdir(parent):
                break
            os.rmdir(parent)
            parent = os.path.dirname(parent)


def unit_name(template, instance):
    base = os.path.basename(template)  # edge-agent@.service
    prefix, _, suffix = base.partition("@")
    return f"{prefix}@{instance}{suffix}"


def raspberry_pi_groups(wanted):
    try:
        with open(MODEL_FILE, "rb") as handle:
            model = handle.read().decode(errors="replace")
    except OSError:
        return []
    if "Raspberry Pi" not in model:
        return []
    existing = []
    for name in wanted:
        try:
            grp.getgrnam(name)
            existing.append(name)
        except KeyError:
            pass
    return existing


def groups_dropin(template, groups):
    """(path, text) of the drop-in that gives the agents the Pi's GPIO/I2C groups, or None."""
    path = os.path.join(
        os.path.dirname(template), os.path.basename(template) + ".d", "10-pi-groups.conf"
    )
    if not groups:
        return path, None
    return path, "[Service]\nSupplementaryGroups=" + " ".join(groups) + "\n"


# systemd states in which an instance is running or about to (not a reason to restart it).
RUNNING_STATES = ("active", "activating", "reloading")


def run(module):
    params = module.params
    present = params["state"] == "present"
    files = params["files"] if present else {}
    instances = params["instances"] if present else {}
    template = params["unit"]
    old_instances, old_files, applied = read_record(params["record"])
    # Instances of an earlier run whose record was lost still have their wants links.
    if os.path.isdir(WANTS_DIR):
        prefix = unit_name(template, "")[: -len(".service")]
        old_instances += [
            link[len(prefix) : -len(".service")]
            for link in os.listdir(WANTS_DIR)
            if link.startswith(prefix) and link.endswith(".service")
        ]
    differ = sorted(path for path, spec in files.items() if not file_matches(path, spec))
    stale = sorted(set(old_instances) - set(instances))
    stale_files = sorted(set(old_files) - set(files) - {params["record"]})
    legacy_units = [unit for unit in params["legacy_units"] if os.path.exists(unit)]
    legacy_files = [path for path in params["legacy_files"] if os.path.lexists(path)]
    legacy_users = [user for user in params["legacy_users"] if user_exists(user)]

    dropin_path, dropin_text = groups_dropin(template, raspberry_pi_groups(params["pi_groups"]))
    dropin_now = None
    if os.path.exists(dropin_path):
        with open(dropin_path, encoding="utf-8") as handle:
            dropin_now = handle.read()
    if not present:
        dropin_text = None
    dropin_changed = dropin_now != dropin_text

    names = sorted(instances)
    wanted_digests = {n: inputs_digest(instances[n], files, dropin_text or "") for n in names}
    inactive = []
    if names:
        units = [unit_name(template, n) for n in names]
        states = module.run_command(["systemctl", "is-active", *units])[1].split()
        inactive = [n for n, state in zip(names, states) if state not in RUNNING_STATES]
    # A run that wrote files but died before restarting leaves the old digest recorded.
    restart = [n for n in names if n in inactive or applied.get(n) != wanted_digests[n]]
    unlinked = [
        n for n in names if not os.path.islink(os.path.join(WANTS_DIR, unit_name(template, n)))
    ]

    result = {
        "changed": bool(
            differ
            or stale
            or stale_files
            or legacy_units
            or legacy_files
            or legacy_users
            or dropin_changed
            or restart
            or unlinked
        ),
        "differ": differ,
        "removed_instances": stale,
        "restarted": restart if module.check_mode else [],
        "instances": names,
    }
    if module.check_mode or not result["changed"]:
        return result
    missing = [path for path in differ if path not in params["contents"]]
    if missing:
        result["needs"] = missing
        return result

    for path, mode in params["directories"].items() if present else ():
        os.makedirs(path, exist_ok=True)
        os.chown(path, 0, 0)  # an older layout made some of them its static user's
        os.chmod(path, int(mode, 8))
    for path in differ:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomically(path, base64.b64decode(params["contents"][path]), files[path])

    stop = [unit_name(template, n) for n in stale] + [os.path.basename(u) for u in legacy_units]
    if stop:
        module.run_command(["systemctl", "disable", "--now", *stop])
    base = params["state_dir"]
    private = os.path.join(os.path.dirname(base), "private", os.path.basename(base))
    for name in stale:
        remove_path(os.path.join(WANTS_DIR, unit_name(template, name)))
        remove_path(os.path.join(base, name))
        remove_path(os.path.join(private, name))
    for path in stale_files + legacy_units + legacy_files:
        remove_path(path)
    for user in legacy_users:
        module.run_command(["userdel", user], check_rc=True)
    # The single-device layout kept its state directory private to its static user; the
    # dynamic users must be able to pass through it to their own.
    if present and os.path.isdir(base) and not os.path.islink(base):
        os.chown(base, 0, 0)
        os.chmod(base, 0o755)
    keep = set(params["directories"]) if present else set()
    prune_empty_dirs(stale_files + legacy_files, keep)

    if dropin_changed:
        if dropin_text is None:
            remove_path(dropin_path)
            prune_empty_dirs([dropin_path], set())
        else:
            os.makedirs(os.path.dirname(dropin_path), exist_ok=True)
            write_atomically(dropin_path, dropin_text.encode(), {"mode": "0644"})

    os.makedirs(WANTS_DIR, exist_ok=True)
    for name in unlinked:
        os.symlink(template, os.path.join(WANTS_DIR, unit_name(template, name)))

    if template in differ or dropin_changed or stale or legacy_units:
        module.run_command(["systemctl", "daemon-reload"], check_rc=True)
    if restart:
        # One call per host, whatever the number of devices.
        units = [unit_name(template, n) for n in restart]
        module.run_command(["systemctl", "restart", *units], check_rc=True)
    result["restarted"] = restart

    if present:
        record = {"instances": names, "files": sorted(files), "applied": wanted_digests}
        write_atomically(
            params["record"], (json.dumps(record, indent=1) + "\n").encode(), {"mode": "0644"}
        )
    else:
        remove_path(params["record"])
        prune_empty_dirs([params["record"], *stale_files], set())
        for path in sorted(params["directories"], key=len, reverse=True):
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
    return result


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def main():
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "files": {"type": "dict", "default": {}},
            "contents": {"type": "dict", "default": {}, "no_log": True},
            "instances": {"type": "dict", "default": {}},
            "unit": {"type": "path", "required": True},
            "directories": {"type": "dict", "default": {}},
            "state_dir": {"type": "path", "required": True},
            "record": {"type": "path", "required": True},
            "pi_groups": {"type": "list", "elements": "str", "default": []},
            "legacy_units": {"type": "list", "elements": "path", "default": []},
            "legacy_files": {"type": "list", "elements": "path", "default": []},
            "legacy_users": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**run(module))
    except (OSError, KeyError) as exc:
        module.fail_json(msg=f"edge_agent_bundle: {exc}")


if __name__ == "__main__":
    main()
