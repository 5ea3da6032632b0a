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
    oldest first, each in its own transaction.
  - Runs hold an advisory lock, so concurrent runs (for example two AWX jobs) apply each migration once.
  - Each applied migration is recorded with a SHA-256 checksum in C(selfbase_meta.schema_migrations).
    If a migration that was applied has since been edited, or the database has a migration this
    collection does not know, the module fails and changes nothing.
  - The schema creates the roles C(selfbase_owner) (owns everything), C(selfbase_app) (applications,
    one tenant at a time through row-level security), C(selfbase_admin) (the control-plane modules)
    and C(selfbase_monitor) (quota metrics), all NOLOGIN. Grant them to your login roles.
options:
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

LOCK_KEY = 'selfbase.platform_schema'
META_DDL = '''
CREATE SCHEMA IF NOT EXISTS selfbase_meta;
CREATE TABLE IF NOT EXISTS selfbase_meta.schema_migrations (
  version    text PRIMARY KEY,
  name       text NOT NULL,
  checksum   text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now(),
  applied_by text NOT NULL DEFAULT session_user
)'''


def read_applied(conn):
    if conn.execute("SELECT to_regclass('selfbase_meta.schema_migrations') IS NULL AS missing").fetchone()['missing']:
        return {}
    rows = conn.execute('SELECT version, name, checksum FROM selfbase_meta.schema_migrations ORDER BY version')
    return dict((r['version'], r) for r in rows)


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
    argument_spec.update(target_version=dict(type='str'))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    target = module.params['target_version']
    known = [m[0] for m in MIGRATIONS]
    if target is not None and target not in known:
        module.fail_json(msg='target_version %s is not a known migration; known versions: %s'
                             % (target, ', '.join(known)))

    conn = connect(module, autocommit=True)
    # Serialise concurrent runs; the lock ends with the session.
    conn.execute('SELECT pg_advisory_lock(hashtextextended(%s, 0))', (LOCK_KEY,))
    applied = read_applied(conn)
    check_history(module, applied)
    wanted = [m for m in MIGRATIONS if target is None or m[0] <= target]
    pending = [m for m in wanted if m[0] not in applied]
    before = sorted(applied)

    if pending and not module.check_mode:
        conn.execute(META_DDL)
        for version, name, sql, checksum in pending:
            try:
                with conn.transaction():
                    conn.execute(sql)
                    # a migration may SET LOCAL ROLE; record it as the login role
                    conn.execute('RESET ROLE; RESET search_path')
                    conn.execute('INSERT INTO selfbase_meta.schema_migrations (version, name, checksum) '
                                 'VALUES (%s, %s, %s)', (version, name, checksum))
            except DatabaseError as e:
                module.fail_json(msg='Migration %s (%s) failed and was rolled back: %s'
                                     % (version, name, str(e).strip()),
                                 applied=[v for v in [p[0] for p in pending] if v < version])
        after = sorted(read_applied(conn))
    else:
        after = sorted(before + [m[0] for m in pending])

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
