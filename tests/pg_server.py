"""A throwaway PostgreSQL server for tests: initdb in a temp dir, trust auth, unix socket only.

Use :func:`pg_server` as a context manager, or the ``pg_server`` session fixture (import it
into a test module). It skips the test, with a message saying what to install, when the
PostgreSQL binaries or a SQLAlchemy driver (psycopg 3) are missing.

The server runs as an unprivileged OS user (initdb refuses root): the ``postgres`` system
user when running as root, else the current user. It listens on a unix socket in its temp
dir only (no TCP port), and is stopped and deleted afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_INSTALL_HINT = (
    "install the PostgreSQL server binaries (Debian/Ubuntu: `apt-get install postgresql`, "
    "which provides /usr/lib/postgresql/<version>/bin) or put initdb/pg_ctl on PATH"
)


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``: PATH first, then the
    newest ``/usr/lib/postgresql/*/bin``; ``None`` when not installed."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(
        (Path(p) for p in versions),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in candidates:
        if all((bindir / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def _run_as() -> str | None:
    """The OS user to run the server as (``None``: the current user)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip(
            "running as root and there is no `postgres` system user to run PostgreSQL as "
            "(initdb refuses root): create one with `useradd --system postgres`"
        )
    return "postgres"


@dataclass
class PgServer:
    """A running throwaway server; :meth:`create_database` gives fresh SQLAlchemy URLs."""

    bindir: Path
    root: Path
    user: str | None

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def role(self) -> str:
        """The database superuser name (initdb names it after the OS user)."""
        return self.user or pwd.getpwuid(os.geteuid()).pw_name

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql+psycopg`` URL for ``database`` over the unix socket."""
        return f"postgresql+psycopg://{self.role}@/{database}?host={self.socket_dir}"

    def connect(self, database: str = "postgres"):  # noqa: ANN201 - psycopg.Connection
        """A plain psycopg connection in autocommit mode (for admin statements)."""
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir), user=self.role, dbname=database, autocommit=True
        )

    def create_database(self, prefix: str = "wb", lock_timeout: str = "30s") -> str:
        """Create a fresh, empty database and return its SQLAlchemy URL.

        Its sessions wait at most ``lock_timeout`` for a lock, so a lock-wait bug fails a
        test instead of hanging it.
        """
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
            conn.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '{lock_timeout}'")
        return self.url(name)

    def _cmd(self, *args: str) -> list[str]:
        return ["runuser", "-u", self.user, "--", *args] if self.user else list(args)

    def start(self) -> None:
        """initdb (trust auth, C locale, UTF-8) and ``pg_ctl start -w``."""
        self.data_dir.mkdir()
        self.socket_dir.mkdir()
        if self.user:
            entry = pwd.getpwnam(self.user)
            for path in (self.root, self.data_dir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            self._cmd(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ),  # fmt: skip
            check=True,
            capture_output=True,
            text=True,
        )
        options = (
            f"-c listen_addresses='' -c unix_socket_directories='{self.socket_dir}' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200 -c shared_buffers=32MB"
        )
        subprocess.run(
            self._cmd(
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-l",
                str(self.root / "server.log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ),  # fmt: skip
            check=True,
            capture_output=True,
            text=True,
        )

    def stop(self) -> None:
        """``pg_ctl stop -m immediate`` (the data is thrown away anyway)."""
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                self._cmd(
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ),  # fmt: skip
                check=False,
                capture_output=True,
            )

    def log_tail(self, n: int = 30) -> str:
        """The last lines of the server log (for failure messages)."""
        path = self.root / "server.log"
        return "\n".join(path.read_text().splitlines()[-n:]) if path.exists() else ""


def require_driver() -> None:
    """Skip unless psycopg 3 is importable (SQLAlchemy's ``postgresql+psycopg`` dialect)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip(
            "PostgreSQL tests need psycopg 3: `.venv/bin/pip install 'psycopg[binary]>=3.1'`"
        )


@contextlib.contextmanager
def pg_server() -> Iterator[PgServer]:
    """Start a throwaway server; stop it and delete its files on exit (skips when unavailable)."""
    require_driver()
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(f"PostgreSQL binaries not found: {_INSTALL_HINT}")
    user = _run_as()
    # /tmp: reachable by the server's user (a root-only $TMPDIR is not) and short enough for
    # the unix socket path (at most 107 bytes)
    base = "/tmp" if Path("/tmp").is_dir() else None
    server = PgServer(
        bindir=bindir, root=Path(tempfile.mkdtemp(prefix="wbpg_", dir=base)), user=user
    )
    try:
        try:
            server.start()
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(
                f"could not start PostgreSQL from {bindir}: {exc.stderr or exc.stdout}\n"
                f"{server.log_tail()}"
            ) from exc
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """Session fixture: one throwaway server for all PostgreSQL tests."""
    with pg_server() as server:
        yield server
