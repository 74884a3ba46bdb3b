"""PostgreSQL for the team stack: Debian's server binaries, one cluster in the stack's folder,
listening on 127.0.0.1 only, password (scram) over TCP and trust only on its own Unix socket.
The postmaster runs in the foreground of its process group, so the stack stops it like any other
service (SIGINT: PostgreSQL's fast shutdown)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from pipeline.core import atomic
from pipeline.core.errors import ConfigError

SUPERUSER = "postgres"
DATABASES = ("mlflow", "mlflow_auth", "prefect")
INSTALL_HINT = "apt-get install postgresql-15 (Debian's PostgreSQL server)"


def bin_dir() -> Path:
    """Where initdb and postgres are: Debian keeps them off PATH, under /usr/lib/postgresql."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise ConfigError(f"the team stack needs PostgreSQL and none is installed: {INSTALL_HINT}")


def _version(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


def run_as() -> str | None:
    """PostgreSQL refuses to run as root: as root, the cluster belongs to the postgres user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ConfigError(f"running as root, the team stack needs the '{SUPERUSER}' user that "
                          f"Debian's package creates: {INSTALL_HINT}") from None  # fmt: skip
    return SUPERUSER


def init_cluster(data: Path, password: str) -> None:
    """A new cluster (once): UTF-8, C collation, scram passwords for TCP, trust on the socket."""
    user = run_as()
    data.mkdir(parents=True, exist_ok=True)
    pwfile = data.parent / "pg.pw"
    atomic.write_private(pwfile, password + "\n")
    if user:
        shutil.chown(data, user)
        shutil.chown(pwfile, user)
    argv = [str(bin_dir() / "initdb"), "-D", str(data), "-U", SUPERUSER, "-E", "UTF8",
            "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}"]  # fmt: skip
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, user=user)
    except subprocess.CalledProcessError as exc:
        raise ConfigError(f"initdb failed in {data}:\n{exc.stderr[-2000:]}") from None
    finally:
        pwfile.unlink()


def server_argv(data: Path, sockets: Path, port: int) -> list[str]:
    user = run_as()
    sockets.mkdir(parents=True, exist_ok=True)
    if user:
        shutil.chown(sockets, user)
    return [str(bin_dir() / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets),
            "-c", "listen_addresses=127.0.0.1", "-c", "synchronous_commit=off"]  # fmt: skip


def create_databases(port: int, password: str) -> None:
    """The stack's databases, each made once (a restarted stack keeps its data)."""
    import psycopg2

    conn = psycopg2.connect(
        host="127.0.0.1", port=port, user=SUPERUSER, password=password, dbname="postgres"
    )
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction (nor in `with conn`)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            have = {row[0] for row in cur.fetchall()}
            for name in DATABASES:
                if name not in have:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()


def uri(driver: str, password: str, port: int, database: str) -> str:
    return f"postgresql+{driver}://{SUPERUSER}:{password}@127.0.0.1:{port}/{database}"


def accepts(port: int, password: str) -> bool:
    """Whether the server takes a password login over TCP (what the other services will do)."""
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=port, user=SUPERUSER, password=password,
                         dbname="postgres", connect_timeout=2).close()  # fmt: skip
    except psycopg2.OperationalError:
        return False
    return True
