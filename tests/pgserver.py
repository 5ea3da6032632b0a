"""A throwaway PostgreSQL server from Debian's binaries, shared by the module tests
(tests/modules/conftest.py) and the benchmarks (benchmarks/_pg.py).

initdb runs as the postgres user in a temporary directory; the server listens on
a unix socket only, on a free port number. Use it as a context manager."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile

import psycopg
from psycopg.rows import dict_row

# Durability off: every test or benchmark database is rebuilt on each run.
FAST = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def bindir():
    """The newest installed server's bin directory (pgbench ships in the same package), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(cmd, **kwargs):
    """initdb/postgres refuse to run as root; run them as the postgres user then."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


class PostgresServer:
    default_db = "postgres"

    def __init__(self, settings=None, prefix="selfbase-pg-"):
        self.bin = bindir()
        if self.bin is None:
            raise RuntimeError("no PostgreSQL server binaries: run scripts/testbed.sh "
                               "(it installs Debian's postgresql)")
        self.settings = dict(FAST if settings is None else settings)
        self.user = "postgres"
        self.base = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.base, 0o755)
        self.datadir = os.path.join(self.base, "data")
        self.host = os.path.join(self.base, "sock")
        os.mkdir(self.host)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
            shutil.chown(self.host, "postgres")
        self.port = _free_port()

    def __enter__(self):
        as_postgres([f"{self.bin}/initdb", "-D", self.datadir, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                     "--locale=C.UTF-8"])
        opts = f"-p {self.port} -k {self.host} -c listen_addresses=''"
        opts += "".join(f" -c {key}={value}" for key, value in self.settings.items())
        as_postgres([f"{self.bin}/pg_ctl", "-D", self.datadir, "-w", "-l", os.path.join(self.base, "log"),
                     "-o", opts, "start"])
        return self

    def __exit__(self, *exc):
        as_postgres([f"{self.bin}/pg_ctl", "-D", self.datadir, "-m", "immediate", "stop"])
        shutil.rmtree(self.base, ignore_errors=True)

    def conninfo(self, dbname=None, **extra):
        params = dict(host=self.host, port=self.port, user=self.user, dbname=dbname or self.default_db)
        params.update(extra)
        return " ".join(f"{k}={v}" for k, v in params.items())

    def connect(self, dbname=None, autocommit=True, **extra):
        return psycopg.connect(self.conninfo(dbname, **extra), autocommit=autocommit, row_factory=dict_row)

    def login(self, dbname):
        """Module login options for this server."""
        return dict(login_host=self.host, login_port=self.port, login_user=self.user, login_db=dbname)


class PgBouncer:
    """Debian's PgBouncer on a free TCP port of 127.0.0.1, in a directory of its own (it refuses to run as root),
    with an included [databases] file (``routes``) and SCRAM logins from ``logins`` {user: password}."""

    def __init__(self, logins, pool_mode="session"):
        self.base = tempfile.mkdtemp(prefix="selfbase-bouncer-")
        os.chmod(self.base, 0o755)
        self.routes = os.path.join(self.base, "tenants.ini")
        self.port = _free_port()
        self.logins = logins
        self.pool_mode = pool_mode

    def _path(self, name):
        return os.path.join(self.base, name)

    def __enter__(self):
        with open(self.routes, "w", encoding="utf-8") as fh:
            fh.write("[databases]\n")
        with open(self._path("userlist.txt"), "w", encoding="utf-8") as fh:
            fh.write("".join(f'"{u}" "{p}"\n' for u, p in self.logins.items()))
        with open(self._path("pgbouncer.ini"), "w", encoding="utf-8") as fh:
            fh.write(f"%include {self.routes}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\n"
                     f"unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {self._path('userlist.txt')}\n"
                     f"pool_mode = {self.pool_mode}\npidfile = {self._path('pgbouncer.pid')}\n"
                     f"logfile = {self._path('pgbouncer.log')}\n")
        for name in os.listdir(self.base) + [""]:
            if os.geteuid() == 0:
                shutil.chown(self._path(name), "postgres")
        as_postgres([shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", "-d", self._path("pgbouncer.ini")])
        return self

    def signal(self, sig):
        with open(self._path("pgbouncer.pid"), encoding="utf-8") as fh:
            os.kill(int(fh.read()), sig)

    def __exit__(self, *exc):
        self.signal(15)
        shutil.rmtree(self.base, ignore_errors=True)

    def connect(self, dbname, user, password, **extra):
        return psycopg.connect(host="127.0.0.1", port=self.port, dbname=dbname, user=user, password=password,
                               autocommit=True, **extra)
