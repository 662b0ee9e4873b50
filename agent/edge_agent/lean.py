"""Keep modules that paho (or logging) imports but the agent never uses out of the heap.

Each deferred module is a placeholder in sys.modules that imports the real module on first
attribute access, so correctness never depends on this: at worst the memory comes back.
Python's heap is what each of the ~10 agents on a host pays for itself (file-backed pages
are shared), so every 100 kB here is 1 MB per host of ten.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any


class _NeverRaised(Exception):
    """Stands in for ssl's want-read/want-write errors when TLS is off: a plain TCP socket
    never raises them, so paho's `except ssl.SSLWant...Error` clauses cannot match anyway."""


def _system() -> str:
    return os.uname().sysname  # what platform.system() returns on POSIX


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
        __import__(name)
        return getattr(sys.modules[name], attr)

    stub.__getattr__ = load  # type: ignore[method-assign]
    sys.modules[name] = stub
    if parent:
        __import__(parent)  # not importlib: that package would be one more import
        setattr(sys.modules[parent], child, stub)


def defer_unused_imports(tls: bool) -> None:
    """Call before importing paho (private dirty memory saved, Python 3.11).

    paho: urllib.request (~0.5 MB with http.client and email) and urllib.parse (~0.5 MB with
    ipaddress) look up SOCKS proxies, only when PySocks is installed. hashlib (~0.1 MB, and it
    maps libcrypto) is for WebSocket handshakes, uuid (~0.2 MB) for random client ids; the
    agent always sets one. platform (~0.1 MB) only answers platform.system() at import.
    logging: traceback (~0.3 MB with linecache and tokenize) formats exceptions: only on
    log.exception(). ssl (libssl + libcrypto, ~1 MB heap): only with TLS. paho evaluates
    ssl.SSLWantReadError/SSLWantWriteError in `except` clauses whenever a non-blocking socket
    call would block, so those two are provided by the placeholder itself.
    """
    defer_import("urllib.request")
    defer_import("urllib.parse")
    defer_import("hashlib")
    defer_import("uuid")
    defer_import("platform", system=_system)
    defer_import("traceback")
    if not tls:
        defer_import("ssl", SSLWantReadError=_NeverRaised, SSLWantWriteError=_NeverRaised)
