#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: platform_schema
short_description: Apply the selfbase platform schema migrations
version_added: 0.1.0
description:
  - Applies the versioned SQL migrations that ship with this collection to the platform database,
    oldest first, each in its own savepoint of one transaction (a failed migration is rolled back, the
    ones before it are kept).
  - Runs hold a row lock in C(selfbase_meta.migration_lock), so concurrent runs (for example two AWX jobs)
    apply each migration once. A run waits at most O(lock_timeout) seconds for another one, then fails clearly.
  - The module refuses to run when C(selfbase_meta), or anything in it, is owned by a role that is neither
    a superuser nor the login running it, or when schema C(platform) is not owned by C(selfbase_owner),
    because their owner could otherwise run code with this login's privileges.
  - The session pins its own C(search_path), so settings made with C(ALTER DATABASE) or C(ALTER ROLE)
    cannot shadow what the module calls.
  - Each applied migration is recorded with a SHA-256 checksum in C(selfbase_meta.schema_migrations).
    If a migration that was applied has since been edited, or the database has a migration this
    collection does not know, the module fails and changes nothing.
  - The schema creates the roles C(selfbase_owner) (owns everything), C(selfbase_app) (applications,
    one tenant at a time through row-level security), C(selfbase_admin) (the control-plane modules)
    and C(selfbase_monitor) (quota metrics), all NOLOGIN. Grant them to your login roles.
options:
  lock_timeout:
    description:
      - Seconds to wait for another run's migration lock before failing.
    type: int
    default: 60
    version_added: 0.1.0
  target_version:
    description:
      - Apply migrations up to and including this version. Default is the newest.
    type: str
extends_documentation_fragment:
  - selfbase.platform.postgres
attributes:
  check_mode:
    support: full
    description: Lists the pending migrations and writes nothing.
  diff_mode:
    support: full
    description: Shows the applied versions before and after.
  idempotent:
    support: full
    description: A second run applies nothing and reports no change.
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Apply the platform schema on the database host
  selfbase.platform.platform_schema:
    login_db: selfbase
  become: true
  become_user: postgres

- name: Apply it from the controller
  selfbase.platform.platform_schema:
    login_host: db1.example.com
    login_user: postgres
    login_password: "{{ vault_postgres_password }}"
    login_db: selfbase
    ssl_mode: verify-full
    ca_cert: /etc/ssl/certs/db-ca.pem
'''

RETURN = r'''
applied:
  description: Versions applied by this run (in check mode, the ones that would be).
  returned: always
  type: list
  elements: str
  sample: ["0001"]
pending:
  description: Versions that were pending before this run.
  returned: always
  type: list
  elements: str
  sample: ["0001"]
versions:
  description: Versions recorded in the database after this run.
  returned: always
  type: list
  elements: str
  sample: ["0001"]
current_version:
  description: Newest applied version after this run, or null when none is.
  returned: always
  type: str
  sample: "0001"
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import (
    DatabaseError, connect, postgres_argument_spec)
from ansible_collections.selfbase.platform.plugins.module_utils.migrations import MIGRATIONS

META_DDL = (
    'CREATE SCHEMA IF NOT EXISTS selfbase_meta',
    '''CREATE TABLE IF NOT EXISTS selfbase_meta.schema_migrations (
  version    text PRIMARY KEY,
  name       text NOT NULL,
  checksum   text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(),
  applied_by text NOT NULL DEFAULT session_user
)''',
    # The row concurrent runs serialise on: nobody without rights on selfbase_meta can lock it.
    'CREATE TABLE IF NOT EXISTS selfbase_meta.migration_lock (name text PRIMARY KEY)',
    "INSERT INTO selfbase_meta.migration_lock (name) VALUES ('platform_schema') ON CONFLICT DO NOTHING",
)

# Who owns selfbase_meta, platform, and every relation in selfbase_meta, and whether to trust them.
TRUST_SQL = '''
SELECT 'schema ' || n.nspname AS object, pg_catalog.pg_get_userbyid(n.nspowner) AS owner,
       CASE n.nspname WHEN 'platform' THEN pg_catalog.pg_get_userbyid(n.nspowner) = 'selfbase_owner'
            ELSE r.rolsuper OR r.rolname = session_user END AS trusted
  FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
 WHERE n.nspname IN ('selfbase_meta', 'platform')
UNION ALL
SELECT 'relation selfbase_meta.' || c.relname, r.rolname, r.rolsuper OR r.rolname = session_user
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner
 WHERE c.relnamespace = pg_catalog.to_regnamespace('selfbase_meta')
'''


def check_trust(module, conn):
    """Refuse schemas this module (or a superuser) did not create: their owner could run code as us."""
    for row in conn.execute(TRUST_SQL):
        if not row['trusted']:
            module.fail_json(msg='Refusing to migrate: %s is owned by %s, which is neither a superuser nor the '
                                 'login running this module%s. Its owner could run code with this login\'s '
                                 'privileges; drop it or change its owner after checking it.'
                                 % (row['object'], row['owner'],
                                    ' (schema platform must be owned by selfbase_owner)'
                                    if row['object'] == 'schema platform' else ''))


def read_applied(conn):
    if conn.execute("SELECT pg_catalog.to_regclass('selfbase_meta.schema_migrations') IS NULL AS missing"
                    ).fetchone()['missing']:
        return {}
    rows = conn.execute('SELECT version, name, checksum FROM selfbase_meta.schema_migrations ORDER BY version')
    return dict((r['version'], r) for r in rows)


def create_meta(conn):
    """selfbase_meta and its tables; two first runs at once may race on CREATE ... IF NOT EXISTS."""
    for attempt in (1, 2):
        try:
            with conn.transaction():
                for sql in META_DDL:
                    conn.execute(sql)
            return
        except DatabaseError:
            if attempt == 2:
                raise


def take_lock(module, conn):
    """Lock the migration row until the transaction ends, waiting at most lock_timeout seconds."""
    timeout = module.params['lock_timeout']
    conn.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true)", ('%ds' % timeout,))
    try:
        conn.execute("SELECT name FROM selfbase_meta.migration_lock WHERE name = 'platform_schema' FOR UPDATE")
    except DatabaseError as e:
        module.fail_json(msg='Another run has held the migration lock (selfbase_meta.migration_lock) for more than '
                             '%d seconds: wait for it to finish, then run again (%s).' % (timeout, str(e).strip()))
    conn.execute("SELECT pg_catalog.set_config('lock_timeout', '0', true)")


def check_history(module, applied):
    """Fail unless every applied migration is one we ship, unchanged."""
    shipped = dict((v, (n, c)) for v, n, _sql, c in MIGRATIONS)
    for version, row in sorted(applied.items()):
        if version not in shipped:
            module.fail_json(msg='The database has migration %s (%s), which this collection does not ship: '
                                 'it was migrated by a newer version of selfbase.platform.' % (version, row['name']))
        if shipped[version][1] != row['checksum']:
            module.fail_json(msg='Migration %s (%s) was edited after it was applied: recorded checksum %s, '
                                 'shipped checksum %s. Restore the original file and put the change in a new '
                                 'migration.' % (version, row['name'], row['checksum'], shipped[version][1]))


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(target_version=dict(type='str'), lock_timeout=dict(type='int', default=60))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    target = module.params['target_version']
    known = [m[0] for m in MIGRATIONS]
    if target is not None and target not in known:
        module.fail_json(msg='target_version %s is not a known migration; known versions: %s'
                             % (target, ', '.join(known)))

    conn = connect(module, autocommit=True)
    check_trust(module, conn)
    wanted = [m for m in MIGRATIONS if target is None or m[0] <= target]
    if module.check_mode:
        applied = read_applied(conn)
        check_history(module, applied)
        pending = [m for m in wanted if m[0] not in applied]
        before = sorted(applied)
        after = sorted(before + [m[0] for m in pending])
    else:
        create_meta(conn)
        check_trust(module, conn)
        # One transaction holds the lock; each migration runs in its own savepoint.
        with conn.transaction():
            take_lock(module, conn)
            applied = read_applied(conn)
            check_history(module, applied)
            pending = [m for m in wanted if m[0] not in applied]
            before = sorted(applied)
            failed = None
            for version, name, sql, checksum in pending:
                try:
                    with conn.transaction():
                        conn.execute(sql)
                        # a migration may SET LOCAL ROLE; record it as the login role
                        conn.execute('RESET ROLE; RESET search_path')
                        conn.execute('INSERT INTO selfbase_meta.schema_migrations (version, name, checksum) '
                                     'VALUES (%s, %s, %s)', (version, name, checksum))
                except DatabaseError as e:
                    failed = (version, name, str(e).strip())
                    break
        if failed:
            module.fail_json(msg='Migration %s (%s) failed and was rolled back: %s' % failed,
                             applied=[p[0] for p in pending if p[0] < failed[0]])
        after = sorted(read_applied(conn))

    result = dict(
        changed=bool(pending),
        applied=[m[0] for m in pending],
        pending=[m[0] for m in pending],
        versions=after,
        current_version=after[-1] if after else None,
    )
    if module._diff:
        result['diff'] = dict(before=dict(versions=before), after=dict(versions=after))
    module.exit_json(**result)


if __name__ == '__main__':
    main()
