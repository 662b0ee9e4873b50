"""Ordered phases of one long-lived fleet: a failed phase names itself, and the phases that
need it are skipped with that reason instead of failing again (or passing on a broken fleet).

A test joins a phase with `@pytest.mark.phase("rerun", needs=("deploy",))`. Every test of a
phase must pass for the phase to pass. The hooks below are imported by a conftest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class PhaseBook:
    """Each phase's outcome so far: 'passed', or why it failed or was skipped."""

    outcomes: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # phase -> first failing test

    def record(self, phase: str, nodeid: str, outcome: str) -> None:
        if outcome == "passed":
            self.outcomes.setdefault(phase, "passed")
            return
        if phase not in self.failures:
            self.failures[phase] = f"{outcome} in {nodeid.split('::')[-1]}"
            self.outcomes[phase] = self.failures[phase]

    def blocker(self, needs: tuple[str, ...]) -> str | None:
        for need in needs:
            if need in self.failures:
                return f"phase '{need}' did not pass ({self.failures[need]})"
        return None


BOOK = PhaseBook()


def _phase(item: pytest.Item) -> tuple[str, tuple[str, ...]] | None:
    marker = item.get_closest_marker("phase")
    if marker is None:
        return None
    return str(marker.args[0]), tuple(marker.kwargs.get("needs", ()))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "phase(name, needs=()): one ordered phase of a shared fleet (tests/support)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    phase = _phase(item)
    if phase is None:
        return
    name, needs = phase
    reason = BOOK.blocker(needs)
    if reason is not None:
        BOOK.record(name, item.nodeid, f"skipped: {reason}")
        pytest.skip(f"phase '{name}' skipped: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    outcome = yield
    phase = _phase(item)
    if phase is None:
        return
    report: pytest.TestReport = outcome.get_result()
    name = phase[0]
    if report.failed:
        BOOK.record(name, item.nodeid, "failed")
        # The phase's name leads the failure, so the log says which step of the fleet broke.
        report.sections.append(("phase", f"this test is part of phase '{name}'"))
    elif report.when == "call" and report.passed:
        BOOK.record(name, item.nodeid, "passed")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not BOOK.outcomes:
        return
    terminalreporter.section("fleet phases")
    for name, outcome in BOOK.outcomes.items():
        terminalreporter.write_line(f"{name:<24} {outcome}")
