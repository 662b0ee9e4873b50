"""Shared by every test: this directory is on the import path, so `support` is importable."""

# The phases of a shared fleet: a failed phase names itself and skips the phases that need it.
pytest_plugins = ["support.phases"]
