"""Shared by every test: this directory is on the import path, so `support` is importable."""
