# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Application tables made tenant-scoped (the selfbase.platform.tenant_table module): read a table's tenant
column, foreign key, index, row-level security, policies and grants; plan the statements that make them what the
task declares; run them in one transaction."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re

from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import audit, require_schema

try:
    from psycopg import sql
except ImportError:  # reported by postgres.connect()
    sql = None

PRIVILEGES = ('select', 'insert', 'update', 'delete')
ALL_PRIVILEGES = PRIVILEGES + ('truncate', 'references', 'trigger')
ON_DELETE = {'cascade': 'c', 'restrict': 'r', 'no_action': 'a'}
CONTROL_ROLE = 'selfbase_admin'
GRAPHQL_ROLE = 'selfbase_graphql'
PREFIX = 'selfbase_'                    # the policies this module owns
RESERVED_SCHEMAS = ('platform', 'selfbase_meta', 'pg_catalog', 'information_schema')
# Once per statement (an InitPlan), not once per row: current_tenant_id() is STABLE, not constant.
TENANT = '(SELECT platform.current_tenant_id())'
GRAPHQL_READ = "NULLIF(current_setting('hasura.user', true), '') IS NULL"
LOCK_TIMEOUT = '60s'

TABLE_OPTIONS = dict(
    schema=dict(type='str', default='public'),
    name=dict(type='str', required=True),
    tenant_column=dict(type='str', default='tenant_id'),
    on_delete=dict(type='str', default='cascade', choices=list(ON_DELETE)),
    index_columns=dict(type='list', elements='str', default=[]),
    backfill_tenant=dict(type='str'),
    grants=dict(type='list', elements='dict', options=dict(
        role=dict(type='str', required=True),
        privileges=dict(type='list', elements='str', choices=list(PRIVILEGES), required=True),
    ), default=[dict(role=r, privileges=list(PRIVILEGES)) for r in ('selfbase_app', GRAPHQL_ROLE, CONTROL_ROLE)]),
    graphql_read=dict(type='bool', default=True),
    exclusive=dict(type='bool', default=False),
    drop_column=dict(type='bool', default=False),
    state=dict(type='str', default='present', choices=['present', 'absent']),
)


# Reading ---------------------------------------------------------------------

def _expr(text):
    """An expression without what PostgreSQL adds when it prints one back: layout, parentheses, the alias of a
    sub-select's column and casts of literals (``'x'::text``)."""
    if text is None:
        return None
    text = re.sub(r' AS \w+\)', ')', text)
    text = re.sub(r"('[^']*')::[a-z ]+", r'\1', text)
    return re.sub(r'[\s()]', '', text)


def read_table(cur, schema, name, column, index_columns):
    """The table's tenant-relevant state as plain values, or None when there is no such table."""
    rel = cur.execute(
        "SELECT c.oid, c.relrowsecurity AS rls, c.relforcerowsecurity AS forced, "
        "pg_catalog.pg_get_userbyid(c.relowner) AS owner FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')", (schema, name)).fetchone()
    if rel is None:
        return None
    oid = rel['oid']
    col = cur.execute(
        "SELECT a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null, "
        "pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default FROM pg_catalog.pg_attribute a "
        "LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "WHERE a.attrelid = %s AND a.attname = %s AND a.attnum > 0 AND NOT a.attisdropped", (oid, column)).fetchone()
    fks = cur.execute(
        "SELECT conname AS name, confdeltype AS on_delete FROM pg_catalog.pg_constraint "
        "WHERE conrelid = %s AND contype = 'f' AND confrelid = 'platform.tenants'::regclass "
        "AND conkey = ARRAY[%s]::int2[]", (oid, col['attnum'] if col else 0)).fetchall()
    wanted = [column] + list(index_columns)
    index = None
    for row in cur.execute(
            "SELECT (SELECT relname FROM pg_catalog.pg_class WHERE oid = i.indexrelid) AS name, ARRAY(SELECT a.attname FROM pg_catalog.unnest(i.indkey) "
            "WITH ORDINALITY k(attnum, ord) JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = k.attnum ORDER BY k.ord) AS columns, i.indpred IS NULL AND i.indexprs IS NULL AS plain "
            "FROM pg_catalog.pg_index i WHERE i.indrelid = %s ORDER BY 1", (oid,)):
        if row['plain'] and list(row['columns'][:len(wanted)]) == wanted:
            index = row['name']
            break
    policies = {}
    for p in cur.execute(
            "SELECT polname AS name, polcmd AS cmd, polpermissive AS permissive, ARRAY(SELECT CASE WHEN r = 0 THEN "
            "'public' ELSE pg_catalog.pg_get_userbyid(r) END FROM pg_catalog.unnest(polroles) r ORDER BY 1) AS roles, "
            "pg_catalog.pg_get_expr(polqual, polrelid) AS using, pg_catalog.pg_get_expr(polwithcheck, polrelid) AS check "
            "FROM pg_catalog.pg_policy WHERE polrelid = %s ORDER BY polname", (oid,)):
        policies[p['name']] = dict(cmd=p['cmd'], permissive=p['permissive'], roles=list(p['roles']),
                                   using=p['using'], check=p['check'])
    grants = {}
    for g in cur.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_catalog.pg_get_userbyid(a.grantee) END AS grantee, "
            "lower(a.privilege_type) AS privilege FROM pg_catalog.pg_class c, "
            "pg_catalog.aclexplode(COALESCE(c.relacl, pg_catalog.acldefault('r', c.relowner))) a "
            "WHERE c.oid = %s AND a.grantee <> c.relowner", (oid,)):
        grants.setdefault(g['grantee'], []).append(g['privilege'])
    return dict(oid=oid, owner=rel['owner'], rls=rel['rls'], forced=rel['forced'],
                column=col and dict(type=col['type'], not_null=col['not_null'], default=col['default']),
                fks=[dict(name=f['name'], on_delete=f['on_delete']) for f in fks], index=index, policies=policies,
                grants=dict((k, sorted(v)) for k, v in grants.items()))


def _count(cur, spec, where=''):
    """Rows of the table (with row security off: an error, never a filtered count, if it would apply)."""
    return cur.execute(sql.SQL('SELECT count(*) AS n FROM {}{}').format(
        sql.Identifier(spec['schema'], spec['name']), sql.SQL(where))).fetchone()['n']


# Planning --------------------------------------------------------------------

def wanted_policies(spec):
    """{name: policy} of the policies this module owns on the table."""
    col = spec['tenant_column']
    tenant_roles = sorted(set(g['role'] for g in spec['grants'] if g['privileges']) - {CONTROL_ROLE})
    rule = '%s = %s' % (col, TENANT)
    out = {PREFIX + 'control': dict(cmd='*', permissive=True, roles=[CONTROL_ROLE], using='true', check='true')}
    if tenant_roles:
        out[PREFIX + 'tenant'] = dict(cmd='*', permissive=True, roles=tenant_roles, using=rule, check=rule)
    if spec['graphql_read'] and GRAPHQL_ROLE in tenant_roles:
        out[PREFIX + 'graphql_read'] = dict(cmd='r', permissive=True, roles=[GRAPHQL_ROLE], using=GRAPHQL_READ,
                                            check=None)
    return out


def same_policy(have, want):
    return (have['cmd'] == want['cmd'] and have['permissive'] and sorted(have['roles']) == sorted(want['roles'])
            and _expr(have['using']) == _expr(want['using']) and _expr(have['check']) == _expr(want['check']))


def wanted_grants(spec):
    return dict((g['role'], sorted(set(g['privileges']))) for g in spec['grants'])


class Table(object):
    """One table's statements, in order, and its state after them."""

    def __init__(self, spec, field, before):
        self.spec, self.field, self.before = spec, field, before
        self.table = sql.Identifier(spec['schema'], spec['name'])
        self.col = sql.Identifier(spec['tenant_column'])
        self.statements = []     # (label, Composed statement, params, run as the table's owner)
        self.warnings = []

    @property
    def key(self):
        return '%s.%s' % (self.spec['schema'], self.spec['name'])

    def add(self, label, statement, params=None, as_owner=False):
        self.statements.append((label, statement, params, as_owner))

    def policy(self, name, p):
        cmd = {'*': 'ALL', 'r': 'SELECT', 'a': 'INSERT', 'w': 'UPDATE', 'd': 'DELETE'}[p['cmd']]
        text = 'CREATE POLICY {} ON {} FOR %s TO {} USING (%s)' % (cmd, p['using'])
        if p['check'] is not None:
            text += ' WITH CHECK (%s)' % p['check']
        self.add('create policy %s' % name, sql.SQL(text).format(
            sql.Identifier(name), self.table, sql.SQL(', ').join(sql.Identifier(r) for r in p['roles'])))

    def drop_policy(self, name, why):
        self.add('drop policy %s (%s)' % (name, why), sql.SQL('DROP POLICY {} ON {}').format(
            sql.Identifier(name), self.table))


def _index_name(spec):
    return ('%s_%s_tenant_idx' % (spec['name'], spec['tenant_column']))[:63]


def plan_present(t, tenant_id, rows_to_fill):
    """The statements that make the table tenant-scoped, from the state read before."""
    spec, before = t.spec, t.before
    col = before['column']
    if col is None:
        t.add('add column %s uuid' % spec['tenant_column'], sql.SQL('ALTER TABLE {} ADD COLUMN {} uuid').format(
            t.table, t.col))
    if rows_to_fill:
        # As the table's owner: its triggers, rules and CHECK expressions run with its rights, never the module's
        t.add('backfill %d row(s) with tenant %s' % (rows_to_fill, spec['backfill_tenant']),
              sql.SQL('UPDATE {} SET {} = %s WHERE {} IS NULL').format(t.table, t.col, t.col), (tenant_id,),
              as_owner=True)
    if col is None or _expr(col['default']) != _expr('platform.current_tenant_id()'):
        t.add('default %s to the session tenant' % spec['tenant_column'], sql.SQL(
            'ALTER TABLE {} ALTER COLUMN {} SET DEFAULT platform.current_tenant_id()').format(t.table, t.col))
    if col is None or not col['not_null']:
        t.add('set %s NOT NULL' % spec['tenant_column'], sql.SQL('ALTER TABLE {} ALTER COLUMN {} SET NOT NULL').format(
            t.table, t.col))
    code = ON_DELETE[spec['on_delete']]
    if not any(fk['on_delete'] == code for fk in before['fks']):
        for fk in before['fks']:
            t.add('drop foreign key %s (on delete %s)' % (fk['name'], fk['on_delete']), sql.SQL(
                'ALTER TABLE {} DROP CONSTRAINT {}').format(t.table, sql.Identifier(fk['name'])))
        t.add('add foreign key to platform.tenants on delete %s' % spec['on_delete'], sql.SQL(
            'ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES platform.tenants (id) ON DELETE %s'
            % spec['on_delete'].replace('_', ' ').upper()).format(
                t.table, sql.Identifier(('%s_%s_fkey' % (spec['name'], spec['tenant_column']))[:63]), t.col))
    if before['index'] is None:
        columns = [spec['tenant_column']] + spec['index_columns']
        t.add('create index %s (%s)' % (_index_name(spec), ', '.join(columns)), sql.SQL('CREATE INDEX {} ON {} ({})').format(
            sql.Identifier(_index_name(spec)), t.table, sql.SQL(', ').join(sql.Identifier(c) for c in columns)))
    if not before['rls']:
        t.add('enable row level security', sql.SQL('ALTER TABLE {} ENABLE ROW LEVEL SECURITY').format(t.table))
    if not before['forced']:
        t.add('force row level security', sql.SQL('ALTER TABLE {} FORCE ROW LEVEL SECURITY').format(t.table))
    want = wanted_policies(spec)
    for name, have in sorted(before['policies'].items()):
        if name.startswith(PREFIX) and (name not in want or not same_policy(have, want[name])):
            t.drop_policy(name, 'not as declared' if name in want else 'no longer declared')
        elif not name.startswith(PREFIX):
            if spec['exclusive']:
                t.drop_policy(name, 'not managed here, exclusive')
            else:
                t.warnings.append('%s: policy %s on %s is not managed by this module and was left alone; it may '
                                  'widen what the declared roles see (exclusive=true drops it)'
                                  % (t.field + 'exclusive', name, t.key))
    for name, p in sorted(want.items()):
        if name not in before['policies'] or not same_policy(before['policies'][name], p):
            t.policy(name, p)
    plan_grants(t)


def plan_grants(t):
    want = wanted_grants(t.spec)
    for grantee, have in sorted(t.before['grants'].items()):
        keep = want.get(grantee, [] if grantee == 'PUBLIC' or t.spec['exclusive'] else have)
        extra = sorted(set(have) - set(keep))
        if extra:
            t.add('revoke %s from %s' % (', '.join(extra), grantee), sql.SQL('REVOKE {} ON {} FROM {}').format(
                sql.SQL(', ').join(sql.SQL(p.upper()) for p in extra), t.table,
                sql.SQL('PUBLIC') if grantee == 'PUBLIC' else sql.Identifier(grantee)))
    for role, privileges in sorted(want.items()):
        missing = sorted(set(privileges) - set(t.before['grants'].get(role, [])))
        if missing:
            t.add('grant %s to %s' % (', '.join(missing), role), sql.SQL('GRANT {} ON {} TO {}').format(
                sql.SQL(', ').join(sql.SQL(p.upper()) for p in missing), t.table, sql.Identifier(role)))


def plan_absent(t):
    spec, before = t.spec, t.before
    for name in sorted(before['policies']):
        if name.startswith(PREFIX):
            t.drop_policy(name, 'state=absent')
    if before['forced']:
        t.add('no force row level security', sql.SQL('ALTER TABLE {} NO FORCE ROW LEVEL SECURITY').format(t.table))
    if before['rls'] and not any(not n.startswith(PREFIX) for n in before['policies']):
        t.add('disable row level security', sql.SQL('ALTER TABLE {} DISABLE ROW LEVEL SECURITY').format(t.table))
    if spec['drop_column'] and before['column'] is not None:
        t.add('drop column %s (with its foreign key and index)' % spec['tenant_column'],
              sql.SQL('ALTER TABLE {} DROP COLUMN {}').format(t.table, t.col))


def predict(t):
    """The state after the statements, as read_table would return it (for check mode and the diff)."""
    spec, after = t.spec, dict(t.before)
    if spec['state'] == 'present':
        after.update(rls=True, forced=True, column=dict(type='uuid', not_null=True,
                                                        default='platform.current_tenant_id()'),
                     fks=[dict(name=('%s_%s_fkey' % (spec['name'], spec['tenant_column']))[:63],
                               on_delete=ON_DELETE[spec['on_delete']])]
                     if not any(fk['on_delete'] == ON_DELETE[spec['on_delete']] for fk in t.before['fks'])
                     else t.before['fks'],
                     index=t.before['index'] or _index_name(spec))
        policies = dict((n, p) for n, p in t.before['policies'].items()
                        if not n.startswith(PREFIX) and not spec['exclusive'])
        policies.update(wanted_policies(spec))
        after['policies'] = policies
        grants = dict((g, v) for g, v in t.before['grants'].items() if g != 'PUBLIC' and not spec['exclusive'])
        grants.update(wanted_grants(spec))
        after['grants'] = dict((g, v) for g, v in grants.items() if v)
    else:
        foreign = [n for n in t.before['policies'] if not n.startswith(PREFIX)]
        after.update(forced=False, rls=t.before['rls'] and bool(foreign),
                     policies=dict((n, t.before['policies'][n]) for n in foreign))
        if spec['drop_column']:
            after.update(column=None, fks=[], index=None)
    return after


def public(state):
    """A state as the module returns it (no oid; policy expressions as PostgreSQL prints them)."""
    if state is None:
        return {}
    out = dict((k, v) for k, v in state.items() if k != 'oid')
    out['policies'] = dict((n, dict(p, using=_expr(p['using']), check=_expr(p['check'])))
                           for n, p in state['policies'].items())
    return out


# Validating ------------------------------------------------------------------

def check(cur, t, roles):
    """Refuse, before any write, what would fail or lose data; returns (backfill tenant id, rows to fill)."""
    spec, before, f = t.spec, t.before, t.field
    col = before['column']
    if col is not None and col['type'] != 'uuid':
        raise InputError('%stenant_column: %s.%s is of type %s; the tenant column must be uuid (rename it, or '
                         'choose another tenant_column)' % (f, t.key, spec['tenant_column'], col['type']))
    for i, g in enumerate(spec['grants']):
        if g['role'] not in roles:
            raise InputError('%sgrants[%d].role: role %s does not exist' % (f, i, g['role']))
    if spec['state'] == 'absent':
        if col is not None:
            tenants = cur.execute(sql.SQL('SELECT count(DISTINCT {}) AS n FROM {}').format(t.col, t.table)
                                  ).fetchone()['n']
            if tenants > 1:
                raise InputError('%sstate: %s holds rows of %d tenants; without its policies every role granted on '
                                 'it would see all of them%s. Move or delete the other tenants\' rows first'
                                 % (f, t.key, tenants, ', and without the column nobody could tell them apart'
                                    if spec['drop_column'] else ''))
        return None, 0
    tenant_id = None
    if spec['backfill_tenant'] is not None:
        row = cur.execute('SELECT id, status FROM platform.tenants WHERE slug = %s', (spec['backfill_tenant'],)
                          ).fetchone()
        if row is None:
            raise InputError('%sbackfill_tenant: no tenant has the slug %r' % (f, spec['backfill_tenant']))
        tenant_id = row['id']
    rows = _count(cur, spec) if col is None else (
        0 if col['not_null'] else _count(cur, spec, ' WHERE %s IS NULL' % sql.Identifier(spec['tenant_column']).as_string(cur)))
    if rows and tenant_id is None:
        raise InputError('%sbackfill_tenant: %s has %d row(s) without a %s; set backfill_tenant to the slug of the '
                         'tenant they belong to' % (f, t.key, rows, spec['tenant_column']))
    return tenant_id, rows


# The run ----------------------------------------------------------------------

def run(module, conn):
    """Plan every table, and apply the plan unless in check mode; returns the module's result."""
    require_schema(module, conn, '0003', dict(changed=True, tables=[], actions=[]))
    cur = conn.cursor()
    # bounded waits for the table locks; counts and backfill see every row, or fail if row security would apply
    cur.execute("SELECT pg_catalog.set_config('lock_timeout', %s, true), "
                "pg_catalog.set_config('row_security', 'off', true)", (LOCK_TIMEOUT,))
    roles = set(r['rolname'] for r in cur.execute('SELECT rolname FROM pg_catalog.pg_roles'))
    tables, seen = [], set()
    for field, spec in (('tables[%d].' % i, spec) for i, spec in enumerate(module.params['tables'])):
        if spec['schema'] in RESERVED_SCHEMAS or spec['schema'].startswith('pg_'):
            raise InputError('%sschema: %s is not an application schema; the platform schema is isolated by its '
                             'own migrations' % (field, spec['schema']))
        before = read_table(cur, spec['schema'], spec['name'], spec['tenant_column'], spec['index_columns'])
        if before is None:
            raise InputError('%sname: there is no table %s.%s' % (field, spec['schema'], spec['name']))
        t = Table(spec, field, before)
        if t.key in seen:
            raise InputError('%sname: %s is listed twice' % (field, t.key))
        seen.add(t.key)
        tenant_id, rows = check(cur, t, roles)
        if spec['state'] == 'present':
            plan_present(t, tenant_id, rows)
        else:
            plan_absent(t)
        tables.append(t)
    for t in tables:
        for warning in t.warnings:
            module.warn(warning)
    changed = any(t.statements for t in tables)
    if changed and not module.check_mode:
        for t in tables:
            for _label, statement, params, as_owner in t.statements:
                if as_owner:
                    cur.execute(sql.SQL('SET LOCAL ROLE {}').format(sql.Identifier(t.before['owner'])))
                cur.execute(statement, params)
                if as_owner:
                    cur.execute('RESET ROLE')
        for t in tables:
            if t.statements:
                after = read_table(cur, t.spec['schema'], t.spec['name'], t.spec['tenant_column'],
                                   t.spec['index_columns'])
                audit(cur, 'tenant_table', t.key, 'update' if t.spec['state'] == 'present' else 'delete',
                      public(t.before), public(after))
                t.after = after
        conn.commit()
    conn.rollback()
    results = []
    for t in tables:
        after = getattr(t, 'after', None) or (predict(t) if t.statements else t.before)
        results.append(dict(table=t.key, changed=bool(t.statements), state=public(after)))
    result = dict(changed=changed, tables=results,
                  actions=['%s: %s' % (t.key, s[0]) for t in tables for s in t.statements])
    if module._diff:
        result['diff'] = dict(before=dict((t.key, public(t.before)) for t in tables if t.statements),
                              after=dict((r['table'], r['state']) for r in results if r['changed']))
    return result
