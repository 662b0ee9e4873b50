"""A private, temporary PostgreSQL cluster on a free loopback port, for tests and benchmarks.

It never touches a system cluster: initdb into a temporary directory, the server listening on
127.0.0.1:<free port> and on a Unix socket inside that directory, trust authentication (only
the local machine can reach it). As root it runs as the `postgres` user, which initdb needs.

    with PostgresCluster() as pg:       # initdb + start; stop + remove on exit
        dsn = pg.create_database("t1")
        pg.kill()                       # SIGKILL the server and every backend (a crash)
        pg.start()                      # crash recovery from the WAL

Standard library only, so bench/ can use it as well as pytest.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Optional

from support.ports import free_port


def pg_bindir() -> Optional[Path]:
    """Where initdb and postgres live: $PG_BINDIR, the newest /usr/lib/postgresql/*/bin, PATH."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _processes() -> list[tuple[int, int]]:
    """(pid, parent pid) of every process, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            found.append((int(entry), int(stat.rsplit(")", 1)[1].split()[1])))
    return found


class PostgresCluster:
    host = "127.0.0.1"

    def __init__(
        self,
        workdir: Optional[Path] = None,
        *,
        port: Optional[int] = None,
        bindir: Optional[Path] = None,
        settings: Optional[dict[str, str]] = None,
    ) -> None:
        found = bindir or pg_bindir()
        if found is None or not (found / "initdb").exists():
            raise FileNotFoundError("PostgreSQL binaries not found (set PG_BINDIR)")
        self.bindir = found
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="edge-pg-"))
        self.datadir = self.workdir / "data"
        self.logfile = self.workdir / "postgres.log"
        self.port = port or free_port()
        self.settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.workdir),
            "max_connections": "30",
            **(settings or {}),
        }
        self.proc: Optional[subprocess.Popen[bytes]] = None
        # initdb and postgres refuse to run as root.
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            user=self.user,
            check=False,
        )

    def init(self) -> None:
        if self.user is not None:
            pw = pwd.getpwnam(self.user)
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.workdir, 0o700)
        result = self._run(
            "initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()}")

    def start(self, timeout: float = 30.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        args = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        with open(self.logfile, "ab") as log:
            # A session of its own: a signal to the test's process group does not reach it.
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.user,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"postgres did not accept connections in {timeout} s: {self.log_tail()}")

    def ready(self) -> bool:
        check = self._run("pg_isready", "-q", "-h", self.host, "-p", str(self.port), "-t", "1")
        return check.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = self._run(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", self.host, "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str) -> str:
        """A fresh database (dropped first if it exists); returns its DSN."""
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.psql(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): disconnects clients, writes a checkpoint."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def pids(self) -> list[int]:
        """The postmaster and its children (backends, checkpointer, WAL writer, ...)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        postmaster = self.proc.pid
        # Each child calls setsid(): they are found by parent, not by process group.
        return [postmaster, *(pid for pid, ppid in _processes() if ppid == postmaster)]

    def kill(self) -> None:
        """SIGKILL the postmaster and all its children at once, as a crash or OOM kill would."""
        if self.proc is None:
            return
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in pids[1:]):
            if time.monotonic() > deadline:
                raise RuntimeError("postgres children outlived SIGKILL")
            time.sleep(0.01)
        self.proc = None

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server's live processes so far (for benchmarks)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / ticks

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        try:
            self.init()
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.cleanup()
