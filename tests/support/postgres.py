"""A real, throwaway PostgreSQL 15 server for tests: the store on PostgreSQL, leader election.

Runs as root (like the lab tests): `initdb` and `pg_ctl` run as the `postgres` user (Debian's
postgresql-15 package creates it) on a data directory in a fresh directory under /tmp that only
`postgres` can enter. It listens on 127.0.0.1 and a free port only, plus a unix socket in that same
directory; fsync is off (a test database need not survive a power cut: a killed server or a
`stop("immediate")` loses nothing committed, the OS still has it). synchronous_commit stays on: with it
off, an immediate stop loses the last ~200 ms of commits, which a crash test would take for a bug.

Roles: the tests connect as `scaler` (password authentication, SCRAM, over TCP), a plain role that
owns its databases and nothing more, like a production service account; `postgres` (the superuser)
is reachable only through the private unix socket (`admin()`), for what a test does *to* the server.

    with PostgresServer() as pg:                 # start() ... stop() + remove the directory
        store = Store(pg.url)                    # postgresql+psycopg://scaler:…@127.0.0.1:PORT/scaler
        url = pg.create_database("t1")           # a fresh, empty database owned by scaler
        pg.restart()                             # same port, same data: clients must reconnect
        pg.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'scaler'")

The server is stopped by its PID-file's postmaster (`pg_ctl stop`, then SIGQUIT/SIGKILL to that PID
if it will not stop) in `stop()`/`close()`; use it as a context manager or in a fixture's finally.
The default cluster Debian may have created (/var/lib/postgresql/15/main) is never touched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "BINDIR",
    "PostgresError",
    "PostgresServer",
    "postgres_server",
    "unavailable",
]

VERSION = 15
BINDIR = Path(f"/usr/lib/postgresql/{VERSION}/bin")
OS_USER = "postgres"
APP_USER = "scaler"
APP_DATABASE = "scaler"
SUPERUSER = "postgres"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresError(RuntimeError):
    """The server did not start or stop; the message carries the end of its log."""


def unavailable() -> str | None:
    """Why a PostgreSQL server cannot be started here (a skip reason), or None if it can."""
    if os.geteuid() != 0:
        return "needs root: initdb and pg_ctl run as user postgres (make test runs as root)"
    if not (BINDIR / "initdb").is_file() or not (BINDIR / "pg_ctl").is_file():
        return f"PostgreSQL {VERSION} is not installed ({BINDIR}/initdb missing; `make system-deps` installs it)"
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        return f"there is no user {OS_USER!r} to run PostgreSQL as (Debian's postgresql package creates it)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie nobody reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


class PostgresServer:
    """One PostgreSQL cluster in its own directory, started and stopped by us only.

    `url` is the SQLAlchemy URL (psycopg 3 driver) of database `scaler` as role `scaler`; `port` and
    `password` stay the same across `restart()`. `pid` is the postmaster's while it runs."""

    def __init__(self, *, port: int | None = None, settings: dict[str, str] | None = None,
                 start_timeout_s: float = 60.0) -> None:
        self.port = port or _free_port()
        self.password = secrets.token_urlsafe(18)
        self.settings = dict(settings or {})
        self.start_timeout_s = start_timeout_s
        self.directory: Path | None = None
        self._pid: int | None = None
        self._initialised = False

    # --- paths -------------------------------------------------------------------------------------

    def _dir(self) -> Path:
        if self.directory is None:
            # mkdtemp: 0700, so only root and, once chowned, postgres enter it; /tmp is traversable.
            self.directory = Path(tempfile.mkdtemp(prefix="scaler-pg-", dir="/tmp"))
            pw = pwd.getpwnam(OS_USER)
            os.chown(self.directory, pw.pw_uid, pw.pw_gid)
        return self.directory

    @property
    def data_dir(self) -> Path:
        return self._dir() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._dir()

    @property
    def log(self) -> Path:
        return self._dir() / "postgres.log"

    # --- what clients use --------------------------------------------------------------------------

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{APP_USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of database `scaler` (created at the first start), role `scaler`, over TCP."""
        return self.url_for(APP_DATABASE)

    @property
    def pid(self) -> int:
        """The postmaster's PID (raises if the server is not running)."""
        if self._pid is None or not _alive(self._pid):
            raise PostgresError("PostgreSQL is not running")
        return self._pid

    @property
    def running(self) -> bool:
        return self._pid is not None and _alive(self._pid)

    # --- lifecycle ---------------------------------------------------------------------------------

    def _as_postgres(self, args: Sequence[str], *, timeout: float) -> subprocess.CompletedProcess[bytes]:
        """Run a PostgreSQL program as the postgres user. Its output goes to the log file, not to a
        pipe: the postmaster pg_ctl leaves behind would hold a pipe open and hang the call."""
        pw = pwd.getpwnam(OS_USER)
        env = {"PATH": f"{BINDIR}:/usr/bin:/bin", "HOME": str(self._dir()), "LC_ALL": "C.UTF-8",
               "PGTZ": "UTC"}
        with self.log.open("ab") as out:
            os.fchown(out.fileno(), pw.pw_uid, pw.pw_gid)
            return subprocess.run([str(BINDIR / args[0]), *args[1:]], stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, env=env, cwd=self._dir(), timeout=timeout,
                                  user=pw.pw_uid, group=pw.pw_gid, extra_groups=[], check=False)

    def _fail(self, what: str) -> PostgresError:
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(no log)"
        return PostgresError(f"PostgreSQL {what} (directory {self.directory}); end of its log:\n{tail}")

    def _initdb(self) -> None:
        pwfile = self._dir() / "superuser.pw"
        pwfile.write_text(secrets.token_urlsafe(18) + "\n")   # never used: the superuser is local-only
        pw = pwd.getpwnam(OS_USER)
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        done = self._as_postgres(["initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "--pwfile", str(pwfile),
                                  "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
                                  "--auth-local=trust", "--auth-host=scram-sha-256"], timeout=120)
        pwfile.unlink()
        if done.returncode != 0:
            raise self._fail("initdb failed")
        # Loopback TCP with a password, the private socket for the superuser; nothing else.
        (self.data_dir / "pg_hba.conf").write_text(
            f"local all {SUPERUSER} trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")

    def start(self) -> PostgresServer:
        """Start the server (initialising the cluster the first time) and wait until it accepts
        connections. Idempotent."""
        if self.running:
            return self
        if not self._initialised:
            self._initdb()
        options = {"port": str(self.port), "listen_addresses": "127.0.0.1",
                   "unix_socket_directories": str(self.socket_dir), "fsync": "off", "full_page_writes": "off",
                   "max_connections": "200", "shared_buffers": "32MB",
                   "timezone": "UTC", "log_min_messages": "warning", **self.settings}
        opts = " ".join(f"-c {k}={v}" for k, v in options.items())
        done = self._as_postgres(["pg_ctl", "-D", str(self.data_dir), "-l", str(self.log), "-o", opts,
                                  "-w", "-t", str(int(self.start_timeout_s)), "start"],
                                 timeout=self.start_timeout_s + 10)
        self._pid = self._read_pid()
        if done.returncode != 0 or self._pid is None:
            with contextlib.suppress(PostgresError):
                self.stop(mode="immediate")
            raise self._fail(f"did not start on 127.0.0.1:{self.port}")
        if not self._initialised:
            self.admin(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{self.password}'")
            self.admin(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}")
            self._initialised = True
        return self

    def _read_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and wait until its postmaster is gone; the data stays (for `start()` or
        `restart()`). `mode`: fast (roll back, disconnect clients) or immediate (like a crash: no
        checkpoint, recovery at the next start). Falls back to signalling the postmaster's PID."""
        pid = self._pid if self._pid is not None else self._read_pid()
        if pid is None or not _alive(pid):
            self._pid = None
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._as_postgres(["pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "30", "stop"],
                              timeout=40)
        for sig in (signal.SIGQUIT, signal.SIGKILL):
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _alive(pid):
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        self._pid = None
        if _alive(pid):
            raise self._fail(f"postmaster {pid} did not stop")

    def restart(self, mode: str = "fast") -> PostgresServer:
        """Stop (`mode` as in stop()) and start again on the same port with the same data."""
        self.stop(mode)
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None
                self._initialised = False

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- administration ----------------------------------------------------------------------------

    def admin(self, sql: str, params: Sequence[Any] | None = None, *,
              database: str = "postgres") -> list[tuple[Any, ...]]:
        """Run one statement as the superuser (unix socket, autocommit); the rows it returned."""
        import psycopg

        with psycopg.connect(host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=database,
                             autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql.encode(), params)  # bytes: no %-placeholder type check (mypy)
            return list(cur.fetchall()) if cur.description is not None else []

    def create_database(self, name: str) -> str:
        """A new, empty database owned by `scaler`; its SQLAlchemy URL."""
        if not _NAME.match(name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        self.admin(f"CREATE DATABASE {name} OWNER {APP_USER}")
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting whoever is still connected to it."""
        if not _NAME.match(name):
            raise ValueError(f"database name {name!r}: lower-case letters, digits and _ only")
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@contextlib.contextmanager
def postgres_server(**kwargs: Any) -> Iterator[PostgresServer]:
    """A started PostgresServer, stopped and removed on exit even when the body failed."""
    with PostgresServer(**kwargs) as server:
        yield server
