"""Fixtures for module tests: a real, throwaway PostgreSQL server, and a way
to run the collection's modules through ansible-playbook against it."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile

import psycopg
import pytest
from psycopg.rows import dict_row

from fakes.stripe_fake import FakeStripe

ROOT = pathlib.Path(__file__).resolve().parents[2]
COLLECTIONS = ROOT / ".cache" / "collections"


def _bindir():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        pytest.fail("no PostgreSQL server binaries: run scripts/testbed.sh (it installs Debian's postgresql)")
    return os.path.dirname(found[-1])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd, **kwargs):
    """initdb/postgres refuse to run as root; run them as the postgres user then."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


class Server:
    def __init__(self, sockdir, port):
        self.host = sockdir
        self.port = port
        self.user = "postgres"

    def conninfo(self, dbname="postgres", **extra):
        params = dict(host=self.host, port=self.port, user=self.user, dbname=dbname)
        params.update(extra)
        return " ".join(f"{k}={v}" for k, v in params.items())

    def connect(self, dbname="postgres", autocommit=True, **extra):
        return psycopg.connect(self.conninfo(dbname, **extra), autocommit=autocommit, row_factory=dict_row)

    def login(self, dbname):
        """Module login options for this server."""
        return dict(login_host=self.host, login_port=self.port, login_user=self.user, login_db=dbname)


@pytest.fixture(scope="session")
def pg_server():
    bindir = _bindir()
    base = tempfile.mkdtemp(prefix="selfbase-pg-")
    os.chmod(base, 0o755)
    datadir, sockdir = os.path.join(base, "data"), os.path.join(base, "sock")
    os.mkdir(sockdir)
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        shutil.chown(sockdir, "postgres")
    port = _free_port()
    _as_postgres([f"{bindir}/initdb", "-D", datadir, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8"])
    _as_postgres([f"{bindir}/pg_ctl", "-D", datadir, "-w", "-l", os.path.join(base, "log"), "-o",
                  f"-p {port} -k {sockdir} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
                  f"-c full_page_writes=off", "start"])
    try:
        yield Server(sockdir, port)
    finally:
        _as_postgres([f"{bindir}/pg_ctl", "-D", datadir, "-m", "immediate", "stop"])
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def schema_template(pg_server):
    """One database with the platform schema applied through the module; tests
    that want the schema get a copy of it (CREATE DATABASE ... TEMPLATE)."""
    name = "tpl_schema"
    with pg_server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    res = Runner(pg_server, name)("platform_schema", {})
    assert res.get("failed") is not True, res
    return name


@pytest.fixture()
def db(pg_server, request):
    """A fresh database per test, dropped afterwards. A test that uses the
    `schema` fixture gets a copy of the schema template instead of an empty one."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    template = request.getfixturevalue("schema_template") if "schema" in request.fixturenames else None
    with pg_server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        if template:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            # a copy does not take the database's own privileges (TEMP, CONNECT); the migrations set them
            conn.execute("UPDATE pg_database SET datacl = (SELECT datacl FROM pg_database WHERE datname = %s) "
                         "WHERE datname = %s", (template, name))
        else:
            conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with pg_server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Runner:
    """Runs one module task through ansible-playbook and returns its result."""

    def __init__(self, server, dbname):
        self.server = server
        self.dbname = dbname

    def __call__(self, module, args, check=False, diff=False, login=True):
        task_args = dict(self.server.login(self.dbname)) if login else {}
        task_args.update(args)
        play = [{"hosts": "localhost", "gather_facts": False,
                 "tasks": [{"name": "under test", f"selfbase.platform.{module}": task_args,
                            "register": "r", "ignore_errors": True}]}]
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as fh:
            json.dump(play, fh)
        env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
                   ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
                   ANSIBLE_PYTHON_INTERPRETER=sys.executable)
        cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
               fh.name]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        finally:
            os.unlink(fh.name)
        try:
            out = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"ansible-playbook printed no JSON:\n{proc.stdout}\n{proc.stderr}")
        return out["plays"][0]["tasks"][0]["hosts"]["localhost"]


@pytest.fixture()
def run(pg_server, db):
    return Runner(pg_server, db)


@pytest.fixture()
def conn(pg_server, db):
    with pg_server.connect(db) as c:
        yield c


@pytest.fixture()
def schema(conn):
    """A database with the platform schema applied (a copy of `schema_template`)."""
    return conn


@pytest.fixture()
def stripe_fake():
    """A fresh stateful fake Stripe server on 127.0.0.1 (contract tests)."""
    with FakeStripe() as fake:
        yield fake
