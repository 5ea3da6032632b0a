# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL access for the selfbase.platform modules: connection options, a
connection helper, and the audit log writer."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import contextlib
import json
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError, ServiceError, fail

try:
    import psycopg
    from psycopg.rows import dict_row
    from psycopg.types.json import Jsonb
    HAS_PSYCOPG = True
    PSYCOPG_IMPORT_ERROR = None
    DatabaseError = psycopg.Error
except ImportError:  # reported through fail_json by connect()
    HAS_PSYCOPG = False
    PSYCOPG_IMPORT_ERROR = traceback.format_exc()
    DatabaseError = Exception


LOCK_TIMEOUT = '60s'


class LockBusy(DatabaseError):
    """A control-plane lock could not be taken in time."""


def postgres_argument_spec():
    """Options documented in the selfbase.platform.postgres doc fragment."""
    return dict(
        login_host=dict(type='str', fallback=(env_fallback, ['PGHOST'])),
        login_port=dict(type='int', default=5432, fallback=(env_fallback, ['PGPORT'])),
        login_user=dict(type='str', fallback=(env_fallback, ['PGUSER'])),
        login_password=dict(type='str', no_log=True, fallback=(env_fallback, ['PGPASSWORD'])),
        login_db=dict(type='str', default='postgres', fallback=(env_fallback, ['PGDATABASE'])),
        ssl_mode=dict(type='str', default='prefer', fallback=(env_fallback, ['PGSSLMODE']),
                      choices=['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']),
        ca_cert=dict(type='path', fallback=(env_fallback, ['PGSSLROOTCERT'])),
        connect_timeout=dict(type='int', default=10),
        target_session_attrs=dict(type='str', default='any', fallback=(env_fallback, ['PGTARGETSESSIONATTRS']),
                                  choices=['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby']),
    )


def connect(module, autocommit=False, **override):
    """Open a psycopg connection from the module's login options (``override`` replaces some: host, port, user,
    password, dbname, target_session_attrs); rows are dicts."""
    if not HAS_PSYCOPG:
        module.fail_json(msg=missing_required_lib('psycopg'), exception=PSYCOPG_IMPORT_ERROR)
    p = module.params
    kwargs = dict(
        host=p['login_host'], port=p['login_port'], user=p['login_user'], password=p['login_password'],
        dbname=p['login_db'], sslmode=p['ssl_mode'], sslrootcert=p['ca_cert'],
        connect_timeout=p['connect_timeout'], application_name='selfbase.platform',
        target_session_attrs=p['target_session_attrs'],
        # Our own search_path, whatever ALTER DATABASE/ROLE set: nothing that another role
        # created can shadow what the modules call (every name is schema-qualified too).
        options='-c search_path=pg_catalog,pg_temp',
    )
    kwargs.update(override)
    try:
        return psycopg.connect(autocommit=autocommit, row_factory=dict_row,
                               **dict((k, v) for k, v in kwargs.items() if v not in (None, '')))
    except psycopg.Error as e:
        if override:
            raise ServiceError('Could not connect to PostgreSQL at %s port %s as %s: %s'
                               % (kwargs['host'], kwargs['port'], kwargs['user'], str(e).strip()))
        module.fail_json(msg='Could not connect to PostgreSQL: %s' % str(e).strip())


def run_module(module, run, autocommit=False, failure=None):
    """Connect, exit with the result of run(conn); an input, service or database error ends the run through
    errors.fail (the transaction rolled back), with the extra result keys failure() gives."""
    conn = connect(module, autocommit=autocommit)
    try:
        result = run(conn)
    except (InputError, ServiceError, DatabaseError) as e:
        fail(module, e, conn, **(failure() if failure else {}))
    finally:
        conn.close()
    module.exit_json(**result)


def schema_version(conn):
    """The newest migration recorded in the ledger, or None before the first one (or without read access)."""
    row = conn.execute("SELECT pg_catalog.has_schema_privilege('selfbase_meta', 'USAGE') AS readable "
                       "WHERE pg_catalog.to_regnamespace('selfbase_meta') IS NOT NULL").fetchone()
    if not row or not row['readable']:
        return None
    return conn.execute('SELECT max(version) AS v FROM selfbase_meta.schema_migrations').fetchone()['v']


def require_schema(module, conn, min_version='0001', check_mode_result=None):
    """Fail clearly unless the migration ledger records min_version or a newer migration.

    In check mode on a fresh database, platform_schema's own check run wrote
    nothing, so the schema is missing here too: exit with check_mode_result
    (the caller's prediction) instead of failing, when the caller gives one."""
    current = schema_version(conn)
    if current is not None and current >= min_version:
        return current
    if current is None and module.check_mode and check_mode_result is not None:
        module.warn('The platform schema is not installed yet; check mode predicts the changes '
                    'of a run after selfbase.platform.platform_schema.')
        module.exit_json(**check_mode_result)
    module.fail_json(msg='The platform schema in database %s is at version %s, this module needs %s or newer: run '
                         'selfbase.platform.platform_schema first (the login needs selfbase_admin or '
                         'selfbase_monitor to read the migration ledger).'
                         % (module.params['login_db'], current or 'none', min_version))


def control_lock(cur, name, timeout=LOCK_TIMEOUT):
    """Serialise control-plane runs on a row of platform.control_locks until the transaction ends.

    Only the control plane can lock these rows (an advisory key anyone could take), and the wait is
    bounded: past `timeout` the run fails with a clear error instead of hanging."""
    cur.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", (timeout,))
    try:
        cur.execute('SELECT name FROM platform.control_locks WHERE name = %s FOR UPDATE', (name,))
    except psycopg.errors.LockNotAvailable:
        raise LockBusy('Another run holds the %s lock (platform.control_locks) for more than %s: '
                       'wait for it to finish, then run again.' % (name, timeout))
    except psycopg.errors.UndefinedTable:
        raise LockBusy('The platform schema predates migration 0003: run selfbase.platform.platform_schema first.')
    cur.execute("SELECT pg_catalog.set_config('lock_timeout', '0', true)")


@contextlib.contextmanager
def held_control_lock(module, name):
    """Hold the control lock `name` on a connection of its own while the block runs, so that the run's own
    transactions can commit; check mode writes nothing and takes no lock."""
    if module.check_mode:
        yield
        return
    lock = connect(module)
    try:
        control_lock(lock.cursor(), name)
        yield
    finally:
        lock.close()


def jsonb(value):
    """Adapt a Python value for a jsonb parameter."""
    return Jsonb(value)


def audit(cur, entity, key, action, before, after, tenant_id=None):
    """Record one change in platform.audit_log, in the caller's transaction."""
    cur.execute(
        'INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action, before, after) '
        'VALUES (%s, %s, %s, %s, %s, %s)',
        (tenant_id, entity, key, action, None if before is None else Jsonb(before),
         None if after is None else Jsonb(after)))


def json_safe(value):
    """Turn rows (with UUIDs, datetimes, Decimals) into plain JSON types."""
    return json.loads(json.dumps(value, default=str))
