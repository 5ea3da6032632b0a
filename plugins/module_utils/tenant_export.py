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


# What runs when rows are loaded with session_replication_role = replica and every column given: triggers and
# rules enabled ALWAYS or REPLICA, CHECK and exclusion constraints, index expressions and predicates, generated
# columns, and the CHECKs of domain-typed columns, on the table and its partitions. Each with the functions it
# calls (directly or through an operator) that neither pg_catalog, the platform's migrations nor a superuser own.
_FOREIGN_CODE = '''
WITH RECURSIVE rels AS (
  SELECT c.oid FROM pg_catalog.pg_class c WHERE c.oid = ANY (%s::oid[])
  UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN rels r ON i.inhparent = r.oid
), objs AS (
  SELECT 'trigger ' || t.tgname AS what, 'pg_catalog.pg_trigger'::pg_catalog.regclass AS classid, t.oid AS objid,
         t.tgrelid AS rel
    FROM pg_catalog.pg_trigger t JOIN rels ON t.tgrelid = rels.oid
   WHERE NOT t.tgisinternal AND t.tgenabled IN ('A', 'R')
  UNION ALL
  SELECT 'rule ' || w.rulename, 'pg_catalog.pg_rewrite'::pg_catalog.regclass, w.oid, w.ev_class
    FROM pg_catalog.pg_rewrite w JOIN rels ON w.ev_class = rels.oid
   WHERE w.ev_enabled IN ('A', 'R') AND w.rulename <> '_RETURN'
  UNION ALL
  SELECT 'constraint ' || c.conname, 'pg_catalog.pg_constraint'::pg_catalog.regclass, c.oid, c.conrelid
    FROM pg_catalog.pg_constraint c JOIN rels ON c.conrelid = rels.oid WHERE c.contype IN ('c', 'x')
  UNION ALL
  SELECT 'index ' || pg_catalog.quote_ident(x.relname), 'pg_catalog.pg_class'::pg_catalog.regclass, i.indexrelid,
         i.indrelid
    FROM pg_catalog.pg_index i JOIN rels ON i.indrelid = rels.oid JOIN pg_catalog.pg_class x ON x.oid = i.indexrelid
  UNION ALL
  SELECT 'generated column ' || a.attname, 'pg_catalog.pg_attrdef'::pg_catalog.regclass, d.oid, d.adrelid
    FROM pg_catalog.pg_attrdef d JOIN rels ON d.adrelid = rels.oid
    JOIN pg_catalog.pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
   WHERE a.attgenerated <> ''
  UNION ALL
  SELECT 'domain ' || c.contypid::pg_catalog.regtype::text || ' of column ' || a.attname,
         'pg_catalog.pg_constraint'::pg_catalog.regclass, c.oid, a.attrelid
    FROM pg_catalog.pg_attribute a JOIN rels ON a.attrelid = rels.oid
    JOIN pg_catalog.pg_constraint c ON c.contypid = a.atttypid
   WHERE a.attnum > 0 AND NOT a.attisdropped
), calls AS (
  SELECT o.rel, o.what, o.classid,
         CASE WHEN d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass THEN op.oprcode::pg_catalog.oid
              ELSE d.refobjid END AS fn
    FROM objs o JOIN pg_catalog.pg_depend d ON d.classid = o.classid AND d.objid = o.objid
    LEFT JOIN pg_catalog.pg_operator op ON op.oid = d.refobjid
   WHERE d.refclassid IN ('pg_catalog.pg_proc'::pg_catalog.regclass, 'pg_catalog.pg_operator'::pg_catalog.regclass)
)
SELECT DISTINCT c.rel::pg_catalog.regclass::text AS "table", c.what, p.oid::pg_catalog.regprocedure::text AS fn
  FROM calls c JOIN pg_catalog.pg_proc p ON p.oid = c.fn JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
 WHERE p.pronamespace NOT IN ('pg_catalog'::pg_catalog.regnamespace, 'platform'::pg_catalog.regnamespace)
   AND NOT r.rolsuper
UNION
SELECT o.rel::pg_catalog.regclass::text, o.what, NULL FROM objs o
 WHERE o.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
ORDER BY 1, 2, 3
'''
AUDIT_STAMP = ('imported_at', 'imported_by')
_CHOOSE = ('SELECT platform.choose_oldest_tenant(ARRAY(SELECT m.user_id FROM platform.tenant_members m '
           'WHERE m.tenant_id = %s))')


def foreign_code(cur, oids):
    """Code of other roles that loading rows into these tables would run as this (superuser) session."""
    return cur.execute(_FOREIGN_CODE, (list(oids),)).fetchall()


def _comparable(tables):
    """Tables as exported, less the stamp the import puts on audit rows."""
    return [dict(t, rows=[dict((k, v) for k, v in r.items() if k not in AUDIT_STAMP) for r in t['rows']])
            if t['name'] == 'platform.audit_log' else t for t in tables]


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
        if row['id'] == doc['tenant_id'] and _comparable(read_tenant(cur, row['id'])) == _comparable(doc['tables']):
            return dict(changed=False, path=p['path'], tenant_id=row['id'], schema_version=version,
                        rows=_counts(doc), diff=dict(before=_counts(doc), after=_counts(doc)))
        raise InputError('tenant: %s already exists in database %s with other rows; import only into a '
                         'database without it' % (p['tenant'], p['login_db']))
    here = dict(('%s.%s' % (t['schema'], t['name']), t) for t in scoped_tables(cur))
    unknown = [t['name'] for t in doc['tables'] if t['rows'] and t['name'] not in here]
    if unknown:
        raise InputError('path: the target database has no tenant-scoped table %s' % ', '.join(unknown))
    # Every row is the file's tenant's, by the target's own tenant column (a doctored file could carry another
    # tenant's membership or audit rows).
    for t in doc['tables']:
        if not t['rows']:
            continue
        col = here[t['name']]['col']
        others = [r for r in t['rows'] if not isinstance(r, dict) or r.get(col) != doc['tenant_id']
                  or (t['name'] == 'platform.tenants' and r.get('slug') != doc['tenant'])]
        if others:
            raise InputError('path: %d row(s) of %s are not tenant %s (%s %s); a tenant export holds one tenant\'s rows'
                             % (len(others), t['name'], doc['tenant'], col, doc['tenant_id']))
    # No code of another role may run as this superuser session while the rows load.
    foreign = foreign_code(cur, [here[t['name']]['oid'] for t in doc['tables'] if t['rows']])
    if foreign:
        who = cur.execute('SELECT current_user AS u').fetchone()['u']
        raise InputError('path: importing would run code that a non-superuser controls, as %s: %s; disable or '
                         'remove it first' % (who, '; '.join(
                             '%s %s%s' % (f['table'], f['what'], ' calls ' + f['fn'] if f['fn'] else '')
                             for f in foreign)))
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
    # imported audit rows say so: their actor and time are what the file claimed
    cur.execute('UPDATE platform.audit_log SET imported_at = pg_catalog.now(), imported_by = session_user '
                'WHERE tenant_id = %s', (doc['tenant_id'],))
    cur.execute('SET LOCAL session_replication_role = origin')
    for t in doc['tables']:
        if t['rows']:
            _orphans(cur, t['name'], t['tenant_column'], doc['tenant_id'])
    # A choice is the user's, not the tenant's (migration 0008): a loaded member without one gets their oldest
    # membership, as the trigger the load turned off would have given them.
    if cur.execute("SELECT pg_catalog.to_regprocedure('platform.choose_oldest_tenant(uuid[])') IS NOT NULL AS x").fetchone()['x']:
        cur.execute(_CHOOSE, (doc['tenant_id'],))
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
