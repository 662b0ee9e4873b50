#!/usr/bin/env python3
"""Build the fleet's reproducible zipapps: the agent's and the monitor's consumer service.

edge-agent.pyz holds edge_agent and the installed paho package: a device needs nothing else.
edge-consumer.pyz holds edge_consumer and edge_agent (the wire protocol); its third-party
packages (paho, prometheus_client, starlette, uvicorn) come from a virtualenv on the monitor.

Same inputs give the same bytes (sorted entries, fixed dates and permissions), so Ansible's
copy reports "ok", not "changed", on every re-run.

Each module also gets an unchecked-hash .pyc for the building interpreter's version: Python
never caches bytecode for zip imports, and compiling paho's 200 kB client.py at every start
leaves ~5 MB of extra RSS behind. Other Python versions see a foreign magic number, ignore
the .pyc and compile the .py as usual. Build with the target devices' Python (3.11 on
Raspberry Pi OS bookworm) to get the saving.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import py_compile
import sys
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHEBANG = b"#!/usr/bin/env python3\n"
PROJECT = HERE.parent
MAIN = "import sys\n\nfrom {package}.cli import main\n\nsys.exit(main())\n"
# app -> (its entry package, its packages' source directories, whether paho is embedded)
APPS: dict[str, tuple[str, tuple[Path, ...], bool]] = {
    "agent": ("edge_agent", (HERE / "edge_agent",), True),
    "consumer": (
        "edge_consumer",
        (PROJECT / "consumer" / "edge_consumer", HERE / "edge_agent"),
        False,
    ),
}
DATE = (1980, 1, 1, 0, 0, 0)
SKIP_SUFFIXES = (".pyc", ".pyo")


def package_files(root: Path, arc_prefix: str) -> list[tuple[str, Path]]:
    """(archive name, path) of every file under root, without caches or bytecode."""
    files = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if not path.is_file() or "__pycache__" in rel.parts or path.suffix in SKIP_SUFFIXES:
            continue
        files.append((f"{arc_prefix}/{rel.as_posix()}", path))
    return files


def compile_pyc(name: str, path: Path) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        cfile = os.path.join(tmp, "m.pyc")
        py_compile.compile(
            str(path),
            cfile=cfile,
            dfile=name,
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
        return Path(cfile).read_bytes()


def collect(pyc: bool = True, app: str = "agent") -> list[tuple[str, bytes]]:
    package, roots, embed_paho = APPS[app]
    entries = [entry for root in roots for entry in package_files(root, root.name)]
    paho_root = None
    if embed_paho:
        import paho  # the installed one; it is pure Python

        paho_root = Path(next(iter(paho.__path__)))
        entries += package_files(paho_root, "paho")
    members = [(name, path.read_bytes()) for name, path in entries]
    if pyc:
        members += [(n + "c", compile_pyc(n, p)) for n, p in entries if n.endswith(".py")]
    # paho-mqtt is EPL-2.0/EDL-1.0: ship its licence with the copy we embed.
    if paho_root is not None:
        for dist in paho_root.parent.glob("paho_mqtt-*.dist-info"):
            for lic in dist.rglob("*"):
                if lic.is_file() and ("licenses" in lic.parts or lic.name.startswith("LICENSE")):
                    members.append((f"paho/licenses/{lic.name}", lic.read_bytes()))
    members.append(("__main__.py", MAIN.format(package=package).encode()))
    return sorted(members)


def build(out: Path, pyc: bool = True, app: str = "agent") -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(SHEBANG)
        with zipfile.ZipFile(f, "w") as zf:
            for name, data in collect(pyc, app):
                info = zipfile.ZipInfo(name, date_time=DATE)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # unix, whatever the build host is
                info.external_attr = 0o100644 << 16
                zf.writestr(info, data, compresslevel=9)
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)  # never leave a half-written archive where Ansible looks
    return hashlib.sha256(out.read_bytes()).hexdigest()


def requirements(extra: str) -> str:
    """The project's dependencies plus one extra, from pyproject.toml (their one home)."""
    # The controller runs 3.11+ (ansible-core needs it); mypy checks as 3.10 for the agent's sake.
    import tomllib  # type: ignore[import-not-found,unused-ignore]

    project = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return "\n".join([*project["dependencies"], *project["optional-dependencies"][extra]]) + "\n"


def write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=sorted(APPS), default="agent", help="which zipapp")
    parser.add_argument("--out", default="dist/edge-agent.pyz", help="output path")
    parser.add_argument("--no-pyc", action="store_true", help="ship sources only")
    parser.add_argument(
        "--requirements",
        metavar="EXTRA",
        help="also write <out>.requirements.txt: the dependencies plus this pyproject extra",
    )
    args = parser.parse_args()
    digest = build(Path(args.out), pyc=not args.no_pyc, app=args.app)
    if args.requirements:
        write_if_changed(Path(args.out + ".requirements.txt"), requirements(args.requirements))
    bytecode = (
        "sources only"
        if args.no_pyc
        else f"bytecode for Python {sys.version_info[0]}.{sys.version_info[1]}"
    )
    print(f"{args.out} sha256 {digest} ({bytecode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
