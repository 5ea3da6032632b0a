# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One tenant's rows out of a platform database into a JSON file, and back into
a database that does not have that tenant (tenant_export)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import os
import tempfile

try:
    from psycopg import sql
except ImportError:
    pass  # postgres.connect reports the missing library

from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import require_schema

FORMAT = 'selfbase.platform/tenant-export'
VERSION = 1

# Every table with a tenant column: the platform's (tenant_id, and tenants.id) and
# the application's made tenant-scoped by tenant_table (policy selfbase_tenant and
# a foreign key to platform.tenants), parents before children.
_TABLES = '''
WITH scoped AS (
  SELECT c.oid, n.nspname AS schema, c.relname AS name,
         CASE WHEN n.nspname = 'platform' AND c.relname = 'tenants' THEN 'id' ELSE a.attname END AS col
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_catalog.pg_constraint fk ON fk.conrelid = c.oid AND fk.contype = 'f'
         AND fk.confrelid = 'platform.tenants'::pg_catalog.regclass AND pg_catalog.array_length(fk.conkey, 1) = 1
    LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = fk.conkey[1]
   WHERE c.relkind IN ('r', 'p')
     AND ((n.nspname = 'platform' AND (c.relname = 'tenants' OR a.attname = 'tenant_id'))
          OR (n.nspname <> 'platform' AND a.attname IS NOT NULL AND EXISTS (
                SELECT FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'selfbase_tenant')))
)
SELECT s.oid, s.schema, s.name, s.col,
       ARRAY(SELECT DISTINCT f.confrelid FROM pg_catalog.pg_constraint f
                         WHERE f.conrelid = s.oid AND f.contype = 'f' AND f.confrelid <> s.oid) AS parents,
       ARRAY(SELECT a.attname FROM pg_catalog.pg_attribute a
                         WHERE a.attrelid = s.oid AND a.attidentity <> '' ORDER BY a.attnum) AS identity
  FROM scoped s
 ORDER BY s.schema, s.name
'''


def scoped_tables(cur):
    """The tenant-scoped tables, each parent before its children."""
    rows = cur.execute(_TABLES).fetchall()
    by_oid = dict((r['oid'], r) for r in rows)
    ordered, done = [], set()

    def visit(r, path=()):
        if r['oid'] in done or r['oid'] in path:
            return
        for p in r['parents']:
            if p in by_oid:
                visit(by_oid[p], path + (r['oid'],))
        done.add(r['oid'])
        ordered.append(r)
    for r in rows:
        visit(r)
    return ordered


def read_tenant(cur, tenant_id):
    """Every scoped table's rows of the tenant, in a stable order."""
    tables = []
    for t in scoped_tables(cur):
        rows = cur.execute(sql.SQL(
            'SELECT COALESCE(pg_catalog.json_agg(r ORDER BY pg_catalog.row_to_json(r)::text), %s::json) AS rows'
            ' FROM {} r WHERE {} = %s').format(sql.Identifier(t['schema'], t['name']), sql.Identifier(t['col'])),
            ('[]', tenant_id)).fetchone()['rows']
        tables.append({'name': '%s.%s' % (t['schema'], t['name']), 'tenant_column': t['col'], 'rows': rows})
    return tables


def _tenant(cur, slug):
    return cur.execute('SELECT id::text FROM platform.tenants WHERE slug = %s', (slug,)).fetchone()


def _counts(doc):
    return dict((t['name'], len(t['rows'])) for t in (doc or {}).get('tables', []))


def _read_file(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (IOError, OSError):
        return None
    except ValueError as e:
        raise InputError('path: %s is not a tenant export (JSON): %s' % (path, e))


def export(module, conn):
    p = module.params
    version = require_schema(module, conn)
    conn.rollback()   # one snapshot for every table, from the first statement on
    conn.execute('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY')
    cur = conn.cursor()
    row = _tenant(cur, p['tenant'])
    if row is None:
        raise InputError('tenant: no tenant with slug %s' % p['tenant'])
    doc = {'format': FORMAT, 'version': VERSION, 'schema_version': version, 'tenant': p['tenant'],
           'tenant_id': row['id'], 'tables': read_tenant(cur, row['id'])}
    conn.rollback()
    text = json.dumps(doc, sort_keys=True, indent=1) + '\n'
    before = _read_file(p['path']) if os.path.exists(p['path']) else None
    changed = before != json.loads(text)
    if changed and not module.check_mode:
        directory = os.path.dirname(os.path.abspath(p['path']))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tenant-export-')
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.chmod(tmp, 0o600)
        os.rename(tmp, p['path'])
    return dict(changed=changed, path=p['path'], tenant_id=row['id'], schema_version=version, rows=_counts(doc),
                diff=dict(before=_counts(before), after=_counts(doc)))


def _check_document(doc, path):
    if not isinstance(doc, dict) or doc.get('format') != FORMAT or doc.get('version') != VERSION:
        raise InputError('path: %s is not a tenant export of format %s version %s' % (path, FORMAT, VERSION))


def _orphans(cur, table, col, tenant_id):
    """Foreign keys of the loaded rows whose parent row is missing (triggers, and so FK checks, were off)."""
    fks = cur.execute(
        "SELECT conname, confrelid::regclass::text AS parent,"
        " ARRAY(SELECT a.attname FROM pg_catalog.unnest(conkey) WITH ORDINALITY k(n, i)"
        "   JOIN pg_catalog.pg_attribute a ON a.attrelid = conrelid AND a.attnum = k.n ORDER BY k.i) AS cols,"
        " ARRAY(SELECT a.attname FROM pg_catalog.unnest(confkey) WITH ORDINALITY k(n, i)"
        "   JOIN pg_catalog.pg_attribute a ON a.attrelid = confrelid AND a.attnum = k.n ORDER BY k.i) AS pcols"
        " FROM pg_catalog.pg_constraint WHERE contype = 'f' AND conrelid = %s::regclass", (table,)).fetchall()
    for fk in fks:
        cols = sql.SQL(' AND ').join(sql.SQL('c.{} IS NOT NULL').format(sql.Identifier(c)) for c in fk['cols'])
        match = sql.SQL(' AND ').join(sql.SQL('p.{} = c.{}').format(sql.Identifier(pc), sql.Identifier(c))
                                      for c, pc in zip(fk['cols'], fk['pcols']))
        missing = cur.execute(sql.SQL(
            'SELECT count(*) AS n FROM {} c WHERE c.{} = %s AND {} AND NOT EXISTS (SELECT FROM {} p WHERE {})').format(
            sql.Identifier(*table.split('.', 1)), sql.Identifier(col), cols, sql.SQL(fk['parent']), match),
            (tenant_id,)).fetchone()['n']
        if missing:
            raise InputError('path: %d row(s) of %s refer to rows of %s that the target database does not have '
                             '(%s: %s); create them first' % (missing, table, fk['parent'], fk['conname'],
                                                              ', '.join(fk['cols'])))


def import_(module, conn):
    p = module.params
    doc = _read_file(p['path'])
    if doc is None:
        raise InputError('path: %s cannot be read' % p['path'])
    _check_document(doc, p['path'])
    version = require_schema(module, conn)
    if doc['schema_version'] != version:
        raise InputError('path: the export is of platform schema %s, the database is at %s; apply the same '
                         'migrations first' % (doc['schema_version'], version))
    if doc['tenant'] != p['tenant']:
        raise InputError('tenant: the file holds tenant %s, not %s' % (doc['tenant'], p['tenant']))
    cur = conn.cursor()
    row = _tenant(cur, p['tenant'])
    if row is not None:
        if row['id'] == doc['tenant_id'] and read_tenant(cur, row['id']) == doc['tables']:
            return dict(changed=False, path=p['path'], tenant_id=row['id'], schema_version=version,
                        rows=_counts(doc), diff=dict(before=_counts(doc), after=_counts(doc)))
        raise InputError('tenant: %s already exists in database %s with other rows; import only into a '
                         'database without it' % (p['tenant'], p['login_db']))
    here = dict(('%s.%s' % (t['schema'], t['name']), t) for t in scoped_tables(cur))
    unknown = [t['name'] for t in doc['tables'] if t['rows'] and t['name'] not in here]
    if unknown:
        raise InputError('path: the target database has no tenant-scoped table %s' % ', '.join(unknown))
    # As pg_restore --disable-triggers does: the rows as they were exported (no
    # quota checks, rollups or audit stamps a second time); foreign keys are checked below.
    cur.execute('SET LOCAL session_replication_role = replica')
    for t in doc['tables']:
        if not t['rows']:
            continue
        table = sql.Identifier(*t['name'].split('.', 1))
        cur.execute(sql.SQL('INSERT INTO {} OVERRIDING SYSTEM VALUE SELECT * FROM '
                            'pg_catalog.json_populate_recordset(NULL::{}, %s::json)').format(table, table),
                    (json.dumps(t['rows']),))
        # identity values were given: move each sequence past them
        for col in here[t['name']]['identity']:
            cur.execute(sql.SQL(
                'SELECT pg_catalog.setval(s.seq, GREATEST(x.m, COALESCE(pg_catalog.pg_sequence_last_value(s.seq), 0)))'
                ' FROM (SELECT pg_catalog.pg_get_serial_sequence(%s, %s)::regclass AS seq) s,'
                ' (SELECT max({}) AS m FROM {}) x').format(sql.Identifier(col), table),
                (table.as_string(cur), col))
    cur.execute('SET LOCAL session_replication_role = origin')
    for t in doc['tables']:
        if t['rows']:
            _orphans(cur, t['name'], t['tenant_column'], doc['tenant_id'])
    if module.check_mode:
        conn.rollback()
    else:
        conn.commit()
    return dict(changed=True, path=p['path'], tenant_id=doc['tenant_id'], schema_version=version,
                rows=_counts(doc), diff=dict(before={}, after=_counts(doc)))


def run(module, conn):
    # Row-level security would silently leave rows out of an export, and the load turns triggers off.
    if not conn.execute('SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user').fetchone()['rolsuper']:
        raise InputError('login_user: tenant_export needs a superuser login (row-level security would hide rows '
                         'from any other); run it as postgres on the db host')
    return export(module, conn) if module.params['state'] == 'exported' else import_(module, conn)
