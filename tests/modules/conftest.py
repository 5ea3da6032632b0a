"""Fixtures for module tests: a real, throwaway PostgreSQL server, and a way
to run the collection's modules against it: in the test process (in_process.py),
or through ansible-playbook with SELFBASE_MODULE_TESTS=playbook."""

from __future__ import annotations

import json
import os
import pathlib
import sys
import tempfile

import pytest

from fakes.stripe_fake import FakeStripe
from playbook_fork import PlaybookServer

ROOT = pathlib.Path(__file__).resolve().parents[2]
COLLECTIONS = ROOT / ".cache" / "collections"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(COLLECTIONS))
from pgserver import PostgresServer  # noqa: E402  pylint: disable=wrong-import-position
from in_process import WITH_ACTION_PLUGIN, run_module  # noqa: E402  pylint: disable=wrong-import-position

THROUGH_PLAYBOOK = os.environ.get("SELFBASE_MODULE_TESTS") == "playbook"
# the modules the running test calls through ansible-playbook (its through_playbook marker), and those it called
_VIA_PLAYBOOK = {"named": frozenset(), "called": set()}


def pytest_configure(config):
    config.addinivalue_line("markers", "through_playbook(module, ...): this test calls those modules through "
                                       "ansible-playbook, as users do (every module has such a test)")


@pytest.fixture(autouse=True)
def _through_playbook(request):
    marker = request.node.get_closest_marker("through_playbook")
    _VIA_PLAYBOOK["named"] = frozenset(marker.args if marker else ())
    _VIA_PLAYBOOK["called"] = set()
    yield
    # a marker that names a module the test never calls would leave that module's playbook path untested
    missing = _VIA_PLAYBOOK["named"] - _VIA_PLAYBOOK["called"]
    assert not missing, f"through_playbook names modules the test did not call: {sorted(missing)}"


@pytest.fixture(scope="session")
def pg_server():
    try:
        server = PostgresServer()
    except RuntimeError as e:
        pytest.fail(str(e))
    with server:
        yield server


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
    """Runs one module and returns its result, as a registered task holds it."""

    def __init__(self, server, dbname, playbook=None):
        self.server = server
        self.dbname = dbname
        self.playbook = THROUGH_PLAYBOOK if playbook is None else playbook

    def __call__(self, module, args, check=False, diff=False, login=True):
        task_args = dict(self.server.login(self.dbname)) if login else {}
        task_args.update(args)
        if module in _VIA_PLAYBOOK["named"]:
            _VIA_PLAYBOOK["called"].add(module)
        elif not self.playbook and module not in WITH_ACTION_PLUGIN:
            return run_module(module, task_args, check=check, diff=diff)
        play = {"hosts": "localhost", "gather_facts": False,
                "tasks": [{"name": "under test", f"selfbase.platform.{module}": task_args,
                           "register": "r", "ignore_errors": True}]}
        return run_play(play, check=check, diff=diff)[0]


PLAYBOOK_ENV = dict(ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
                    ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false",
                    ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                    # 2.21 no longer returns the arguments a module saw unless asked; tests read them
                    ANSIBLE_INJECT_INVOCATION="true")
_SERVER = None  # this worker's PlaybookServer, started on its first run


def run_play(play, check=False, diff=False, named=False):
    """Run one play through ansible-playbook on localhost; returns the result of each task, in order (with named,
    as (task name, result) pairs)."""
    global _SERVER  # pylint: disable=global-statement
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as fh:
        json.dump([play], fh)
    env = dict(os.environ, **PLAYBOOK_ENV)
    if _SERVER is None:
        _SERVER = PlaybookServer(env)
    try:
        stdout, stderr = _SERVER.run(["-i", "localhost,", "-c", "local", fh.name]
                                     + ["--check"] * check + ["--diff"] * diff, env)
    finally:
        os.unlink(fh.name)
    try:
        out = json.loads(stdout)
    except ValueError:
        raise AssertionError(f"ansible-playbook printed no JSON:\n{stdout}\n{stderr}")
    tasks = out["plays"][0]["tasks"]
    if named:
        return [(t["task"]["name"], t["hosts"]["localhost"]) for t in tasks]
    return [t["hosts"]["localhost"] for t in tasks]


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


def stripe_runner(module):
    """A fixture that runs ``module`` (Stripe only, no database) against the stripe_fake server."""
    @pytest.fixture()
    def run(stripe_fake):  # pylint: disable=redefined-outer-name
        runner = Runner(None, None)

        def call(args, **kwargs):
            args = dict(dict(api_key=stripe_fake.api_key, api_base=stripe_fake.url), **args)
            return runner(module, args, login=False, **kwargs)
        return call
    return run
