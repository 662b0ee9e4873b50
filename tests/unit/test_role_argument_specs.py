"""Every role's meta/argument_specs.yml agrees with its defaults/main.yml, and refuses bad values.

Ansible validates a role's variables against the `main` entry point of its argument spec before
the role's first task (ansible.builtin.validate_argument_spec, which uses ArgumentSpecValidator):
that is how `-e emulated_hosts_state=gone` stops site.yml before any host is touched. These tests
call the same validator in process, and run one localhost play to show the wiring.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.bad_inputs import BAD_ROLE_VARIABLES
from support.fleet import ROOT, ansible_playbook

pytest.importorskip("ansible")

ROLES_DIR = ROOT / "roles"
ROLES = sorted(path.name for path in ROLES_DIR.iterdir() if path.is_dir())


def argument_spec(role: str) -> dict[str, Any]:
    """The options of the role's `main` entry point."""
    data = yaml.safe_load((ROLES_DIR / role / "meta" / "argument_specs.yml").read_text())
    options: dict[str, Any] = data["argument_specs"]["main"]["options"]
    return options


def role_defaults(role: str) -> dict[str, Any]:
    data = yaml.safe_load((ROLES_DIR / role / "defaults" / "main.yml").read_text())
    return dict(data or {})


def is_template(value: Any) -> bool:
    """True if `value` is, or holds, a string Ansible would template."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(is_template(k) or is_template(v) for k, v in value.items())
    if isinstance(value, list):
        return any(is_template(item) for item in value)
    return False


def same(left: Any, right: Any) -> bool:
    """Equal, and of the same YAML types throughout: 1 is not true, and "15" is not 15."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(same(left[k], right[k]) for k in left)
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same, left, right))
    return bool(left == right)


def validate(role: str, variables: dict[str, Any]) -> list[str]:
    """The error messages of Ansible's role validation of `variables` (the role's defaults
    without templated values, overridden by `variables`), as validate_argument_spec gives them."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    spec = copy.deepcopy(argument_spec(role))
    values = {k: v for k, v in role_defaults(role).items() if k in spec and not is_template(v)}
    values.update(variables)
    for name, option in spec.items():
        if name not in values:
            # A required variable the play passes (or a templated default): not judged here.
            option.pop("required", None)
    result = ArgumentSpecValidator(spec).validate(values, validate_role_argument_spec=True)
    return list(result.error_messages)


def test_every_role_has_an_argument_spec_and_defaults() -> None:
    missing = [
        f"roles/{role}/{part}"
        for role in ROLES
        for part in ("meta/argument_specs.yml", "defaults/main.yml")
        if not (ROLES_DIR / role / part).is_file()
    ]
    assert ROLES
    assert missing == []


@pytest.mark.parametrize("role", ROLES)
def test_every_default_has_an_entry_in_the_main_argument_spec(role: str) -> None:
    unspecified = sorted(set(role_defaults(role)) - set(argument_spec(role)))

    assert unspecified == [], f"roles/{role}: defaults without a spec entry: {unspecified}"


@pytest.mark.parametrize("role", ROLES)
def test_argument_spec_defaults_equal_the_role_defaults(role: str) -> None:
    defaults = role_defaults(role)
    disagreements = [
        f"{name}: spec default {option['default']!r}, defaults/main.yml "
        + (repr(defaults[name]) if name in defaults else "has none")
        for name, option in argument_spec(role).items()
        if "default" in option
        and (name not in defaults or not same(option["default"], defaults[name]))
    ]

    assert disagreements == [], f"roles/{role}:\n" + "\n".join(disagreements)


@pytest.mark.parametrize("role", ROLES)
def test_role_defaults_pass_the_role_argument_spec(role: str) -> None:
    assert validate(role, {}) == []


@pytest.mark.parametrize(("variable", "message"), BAD_ROLE_VARIABLES)
def test_bad_role_variable_is_refused_by_the_argument_spec(variable: str, message: str) -> None:
    name, value = variable.split("=", 1)  # -e name=value gives a string, as here
    (role,) = [role for role in ROLES if name in argument_spec(role)]

    errors = validate(role, {name: value})

    assert len(errors) == 1, errors
    assert message in errors[0]
    assert name in errors[0]


@pytest.mark.parametrize(("variable", "message"), BAD_ROLE_VARIABLES)
def test_bad_role_variable_stops_a_localhost_play_before_the_role_runs_a_task(
    tmp_path: Path, variable: str, message: str
) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(
        "all:\n  hosts:\n    localhost:\n      ansible_connection: local\n"
        '      ansible_python_interpreter: "{{ ansible_playbook_python }}"\n'
    )
    play = tmp_path / "play.yml"
    play.write_text(
        "- name: The role alone\n  hosts: localhost\n  gather_facts: false\n"
        "  roles: [emulated_hosts]\n"
    )

    run = ansible_playbook("-i", str(inventory), str(play), "-e", variable, timeout=120)

    assert run.rc != 0
    assert "Validation of arguments failed" in run.output, run.output[-2000:]
    assert message in run.output, run.output[-2000:]
    # The validation is the role's only task to run, and it failed: nothing ran, nothing changed.
    assert run.recap()["localhost"] == {
        "ok": 0,
        "changed": 0,
        "unreachable": 0,
        "failed": 1,
        "skipped": 0,
        "rescued": 0,
        "ignored": 0,
    }
