"""Test support shared by unit and integration tests: polling, ports, MQTT and fleet helpers.

`tests/conftest.py` puts `tests/` on the import path, so tests import `support.<module>`.
"""
