"""Keep modules that paho imports but the agent never uses out of memory (RSS target 20 MB).

Each deferred module is a placeholder in sys.modules that imports the real module on first
attribute access, so correctness never depends on this: at worst the memory comes back.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any


class _NeverRaised(Exception):
    """Stands in for ssl's want-read/want-write errors when TLS is off: a plain TCP socket
    never raises them, so paho's `except ssl.SSLWant...Error` clauses cannot match anyway."""


def defer_import(name: str, **attrs: Any) -> None:
    """Put a placeholder for module `name` in sys.modules; it imports the module on first use
    of any attribute other than `attrs`."""
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    stub = types.ModuleType(name, f"placeholder: {name} is imported on first use")
    stub.__dict__.update(attrs)

    def load(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if sys.modules.get(name) is stub:
            del sys.modules[name]
        return getattr(importlib.import_module(name), attr)

    stub.__getattr__ = load  # type: ignore[method-assign]
    sys.modules[name] = stub
    if parent:
        setattr(importlib.import_module(parent), child, stub)


def defer_unused_imports(tls: bool) -> None:
    """Call before importing paho.

    urllib.request (~0.5 MB with http.client and email): paho looks up SOCKS proxies with it,
    only when PySocks is installed. hashlib (~3.7 MB, it maps libcrypto): paho needs it only for
    WebSocket handshakes. ssl (libssl + libcrypto, ~5 MB): only with TLS. paho evaluates
    ssl.SSLWantReadError/SSLWantWriteError in `except` clauses whenever a non-blocking socket
    call would block, so those two are provided by the placeholder itself.
    """
    defer_import("urllib.request")
    defer_import("hashlib")
    if not tls:
        defer_import("ssl", SSLWantReadError=_NeverRaised, SSLWantWriteError=_NeverRaised)
