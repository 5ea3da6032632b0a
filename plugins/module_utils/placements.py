# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenant tiers (migration 0010): the clusters that hold tenant databases (selfbase.platform.tenant_cluster) and
where each tenant's rows live (selfbase.platform.tenant_placement).

Placing tenants is planned in Python from a few set-based reads (plan), then written in three steps that a re-run
finishes after any failure: the registry rows are committed as ``provisioning`` (the cluster chosen, so a retry
goes to the same one), the clusters are changed (each statement checks what exists first), and the rows become
``active``. The control lock is held on a connection of its own for the whole run."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import os
import re

from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import (
    audit, connect, control_lock, held_control_lock, json_safe, jsonb, require_schema)

try:
    from psycopg import sql
except ImportError:  # reported by postgres.connect()
    sql = None

NAME_RE = re.compile(r'[a-z0-9][a-z0-9-]{0,62}')
IDENT_RE = re.compile(r'[a-z_][a-z0-9_]{0,62}')
CLUSTER_FIELDS = ('tier', 'host', 'port', 'admin_user', 'admin_db', 'max_databases', 'storage_max_bytes', 'status')
DEFAULT_MAX = {'database': 150, 'dedicated': 1}
PLACEMENT_FIELDS = ('tier', 'cluster', 'database', 'login', 'state', 'migrations')


# Clusters ---------------------------------------------------------------------------------------------------------

def read_clusters(conn):
    """Every cluster with the number of tenant databases it holds: name -> row."""
    rows = conn.execute(
        'SELECT c.name, c.tier, c.host, c.port, c.admin_user, c.admin_db, c.max_databases, c.storage_max_bytes, '
        'c.status, (SELECT count(*) FROM platform.tenant_placements p WHERE p.cluster = c.name) AS databases '
        'FROM platform.clusters c ORDER BY c.name').fetchall()
    return dict((r['name'], r) for r in rows)


def cluster_run(module, conn):
    """selfbase.platform.tenant_cluster: register, change or remove one cluster."""
    p = module.params
    present = p['state'] == 'present'
    if not NAME_RE.fullmatch(p['name']):
        raise InputError('name: lower-case letters, digits and hyphens, at most 63, got %r' % p['name'])
    for field in ('max_databases', 'storage_max_bytes'):
        if p[field] is not None and p[field] < 1:
            raise InputError('%s: must be 1 or more, got %d' % (field, p[field]))
    require_schema(module, conn, '0010', dict(changed=present))
    with conn.transaction():
        if not module.check_mode:
            control_lock(conn.cursor(), 'tenant_cluster')
        row = read_clusters(conn).get(p['name'])
        before = dict((k, row[k]) for k in CLUSTER_FIELDS + ('databases',)) if row else None
        after = None
        if present:
            if row is None and (p['tier'] is None or p['host'] is None):
                raise InputError('tier: a new cluster needs tier and host')
            after = dict(before) if before else dict(databases=0)
            defaults = dict(port=5432, admin_user='postgres', admin_db='postgres', status='active',
                            max_databases=DEFAULT_MAX[p['tier'] or row['tier']], storage_max_bytes=None)
            for field in CLUSTER_FIELDS:
                if p[field] is not None:
                    after[field] = p[field]
                elif row is None:
                    after[field] = defaults[field]
            if row and after['tier'] != row['tier'] and row['databases']:
                raise InputError('tier: cluster %s holds %d tenant databases of tier %s; move them first'
                                 % (p['name'], row['databases'], row['tier']))
            if after['max_databases'] < after['databases']:
                module.warn('cluster %s holds %d tenant databases, more than max_databases %d: no new one goes '
                            'there' % (p['name'], after['databases'], after['max_databases']))
        elif row and row['databases']:
            raise InputError('state: cluster %s still holds %d tenant databases; drop or move them first'
                             % (p['name'], row['databases']))
        changed = before != after
        if changed and not module.check_mode:
            values = [after[f] for f in CLUSTER_FIELDS] if present else None
            if row is None:
                conn.execute('INSERT INTO platform.clusters (name, %s) VALUES (%%s, %s)'
                             % (', '.join(CLUSTER_FIELDS), ', '.join(['%s'] * len(CLUSTER_FIELDS))),
                             [p['name']] + values)
            elif present:
                conn.execute('UPDATE platform.clusters SET %s WHERE name = %%s'
                             % ', '.join('%s = %%s' % f for f in CLUSTER_FIELDS), values + [p['name']])
            else:
                conn.execute('DELETE FROM platform.clusters WHERE name = %s', (p['name'],))
            action = 'create' if row is None else 'update' if present else 'delete'
            with conn.cursor() as cur:
                audit(cur, 'cluster', p['name'], action, json_safe(before), json_safe(after))
    result = dict(changed=changed, cluster=dict(after, name=p['name']) if after else None)
    if module._diff:
        result['diff'] = dict(before=before or {}, after=after or {})
    return result


# Placements: input ------------------------------------------------------------------------------------------------

def read_migrations(paths):
    """The migration files, in order: [{name, sha256, sql}]."""
    files = []
    for i, path in enumerate(paths or []):
        try:
            with open(path, 'rb') as fh:
                data = fh.read()
        except (IOError, OSError) as e:
            raise InputError('migrations[%d]: cannot read %s: %s' % (i, path, e))
        name = os.path.basename(path)
        if any(f['name'] == name for f in files):
            raise InputError('migrations[%d]: two files are named %s' % (i, name))
        files.append(dict(name=name, sha256=hashlib.sha256(data).hexdigest(), sql=data.decode('utf-8')))
    return files


def normalise(p):
    """Validate the placements before anything is read or written; returns them keyed by tenant slug."""
    wanted = {}
    for i, e in enumerate(p['placements']):
        where = 'placements[%d]' % i
        if e['tenant'] in wanted:
            raise InputError('%s.tenant: %s is listed twice' % (where, e['tenant']))
        if e['tier'] == 'pooled' and (e['cluster'] or e['database']):
            raise InputError('%s.cluster: a pooled tenant has no cluster or database of its own' % where)
        database = e['database'] or (p['database_prefix'] + e['tenant'].replace('-', '_'))
        if e['tier'] != 'pooled' and not IDENT_RE.fullmatch(database):
            raise InputError('%s.database: %r is not a database name (lower-case letters, digits and underscores, '
                             'at most 63); set database for this tenant' % (where, database))
        wanted[e['tenant']] = dict(e, database=None if e['tier'] == 'pooled' else database, where=where,
                                   named_database=e['database'])
    if p['template'] and p['migrations']:
        raise InputError('template: give a template database or migration files, not both')
    return wanted


# Placements: plan -------------------------------------------------------------------------------------------------

def storage_used(module, cluster, databases):
    """Bytes held by the given tenant databases on a cluster."""
    with cluster_connection(module, cluster) as c:
        return c.execute('SELECT COALESCE(sum(pg_catalog.pg_database_size(d.oid)), 0)::bigint AS n '
                         'FROM pg_catalog.pg_database d WHERE d.datname = ANY(%s)', (databases,)).fetchone()['n']


def choose(module, tier, clusters, placed, named, where):
    """The cluster a new database goes to: the named one, or the least-loaded active cluster of the tier with
    room. Counts in ``clusters`` include the choices made earlier in this run."""
    candidates = [c for c in clusters.values() if c['tier'] == tier]
    if named:
        c = clusters.get(named)
        if c is None or c['tier'] != tier:
            raise InputError('%s.cluster: no cluster %s of tier %s (%s)' % (
                where, named, tier, ', '.join(sorted(x['name'] for x in candidates)) or 'none registered'))
        candidates = [c]
    room = []
    for c in candidates:
        if c['status'] != 'active' or c['databases'] >= c['max_databases']:
            continue
        if c['storage_max_bytes'] is not None:
            if 'storage_bytes' not in c:
                c['storage_bytes'] = storage_used(module, c, placed.get(c['name'], []))
            if c['storage_bytes'] >= c['storage_max_bytes']:
                continue
        room.append(c)
    if not room:
        use = '; '.join('%s %d/%d databases%s%s' % (
            c['name'], c['databases'], c['max_databases'],
            ', %d of %d bytes' % (c['storage_bytes'], c['storage_max_bytes']) if 'storage_bytes' in c else '',
            ', draining' if c['status'] != 'active' else '') for c in candidates)
        raise InputError('%s.tier: no %s with room for a %s tenant: %s. Register another cluster with '
                         'selfbase.platform.tenant_cluster' % (where, 'cluster ' + named if named else 'cluster',
                                                               tier, use or 'no cluster of this tier'))
    best = min(room, key=lambda c: (c['databases'], c['name']))
    best['databases'] += 1
    return best['name']


def public(row):
    return None if row is None else dict((k, row[k]) for k in PLACEMENT_FIELDS)


def plan(module, conn, wanted, files):
    """Read the registry and compare: [{tenant, id, before, after, action}] for every listed tenant."""
    rows = conn.execute('SELECT t.slug, t.id, p.tier, p.cluster, p.database, p.login, p.state, p.migrations '
                        'FROM platform.tenants t LEFT JOIN platform.tenant_placements p ON p.tenant_id = t.id '
                        'WHERE t.slug = ANY(%s)', (list(wanted),)).fetchall()
    found = dict((r['slug'], r) for r in rows)
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise InputError('%s.tenant: no tenant %s' % (wanted[missing[0]]['where'], ', '.join(missing)))
    clusters = read_clusters(conn)
    placed = {}
    for r in conn.execute('SELECT cluster, database FROM platform.tenant_placements WHERE cluster IS NOT NULL'):
        placed.setdefault(r['cluster'], []).append(r['database'])
    names = [dict(name=f['name'], sha256=f['sha256']) for f in files]
    steps, final = [], {}
    for slug in sorted(wanted):
        e, row = wanted[slug], found[slug]
        before = public(row) if row['tier'] else None
        where = e['where']
        if before and before['database'] and not e['named_database']:
            e = dict(e, database=before['database'])
        if e['state'] == 'absent':
            after = None if e['drop_database'] or not before or before['tier'] == 'pooled' else \
                dict(before, state='retired')
        else:
            if before and (before['tier'] != e['tier'] or (e['cluster'] and e['cluster'] != before['cluster'])
                           or (before['database'] and e['database'] != before['database'])):
                raise InputError('%s.tier: tenant %s lives on %s; moving it to %s is an online move, which this '
                                 'module does not do' % (where, slug, describe(before), describe(e)))
            if e['tier'] == 'pooled':
                after = dict(tier='pooled', cluster=None, database=None, login=None, state='active', migrations=[])
            else:
                cluster = before['cluster'] if before else choose(module, e['tier'], clusters, placed, e['cluster'],
                                                                  where)
                applied = before['migrations'] if before else []
                if names[:len(applied)] != applied:
                    raise InputError('migrations: the files applied to %s (%s) are not the first of the ones given '
                                     '(%s): a file was changed, renamed or removed'
                                     % (e['database'], ', '.join(m['name'] for m in applied) or 'none',
                                        ', '.join(m['name'] for m in names) or 'none'))
                after = dict(tier=e['tier'], cluster=cluster, database=e['database'], login=e['database'],
                             state='active', migrations=names)
        final[slug] = after
        if before != after:
            steps.append(dict(tenant=slug, id=row['id'], before=before, after=after, password=e.get('password'),
                              where=where))
    probe(module, steps, clusters)
    return steps, clusters, final


def probe(module, steps, clusters):
    """Before any write: what already exists on the clusters the run provisions on. A login or database that the
    registry does not know of (a placement of this run's) is refused, never taken over; so is a missing template or
    a new login without a password."""
    template = module.params['template'] or 'template1'
    by_cluster = {}
    for s in steps:
        if s['after'] and s['after']['tier'] != 'pooled' and s['after']['state'] == 'active':
            by_cluster.setdefault(s['after']['cluster'], []).append(s)
    for name, group in sorted(by_cluster.items()):
        with cluster_connection(module, clusters[name]) as c:
            roles = dict((r['rolname'], r['rolsuper']) for r in c.execute(
                'SELECT rolname, rolsuper FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)',
                ([s['after']['login'] for s in group],)))
            dbs = set(r['datname'] for r in c.execute('SELECT datname FROM pg_catalog.pg_database WHERE datname = '
                                                      'ANY(%s)', ([s['after']['database'] for s in group] + [template],)))
        for s in group:
            login, database = s['after']['login'], s['after']['database']
            if s['before'] is None and (login in roles or database in dbs):
                raise InputError('%s.database: %s already exists on cluster %s and is not a placement; choose '
                                 'another database name' % (s['where'], login if login in roles else database, name))
            if roles.get(login):
                raise InputError('%s.database: login %s on cluster %s is a superuser' % (s['where'], login, name))
            if login not in roles and not s['password']:
                raise InputError('%s.password: a new tenant login (%s) needs a password' % (s['where'], login))
            if database not in dbs and template not in dbs:
                raise InputError('template: no database %s on cluster %s' % (template, name))
            s['exists'] = dict(role=login in roles, db=database in dbs)


def describe(p):
    return p['tier'] if p['tier'] == 'pooled' else '%s (cluster %s, database %s)' % (
        p['tier'], p.get('cluster') or 'any', p['database'])


# Placements: write ------------------------------------------------------------------------------------------------

def cluster_connection(module, cluster, dbname=None):
    """An autocommit connection to a cluster's primary as its administrator."""
    passwords = module.params.get('cluster_passwords') or {}
    return connect(module, autocommit=True, host=cluster['host'], port=cluster['port'], user=cluster['admin_user'],
                   password=passwords.get(cluster['name']), dbname=dbname or cluster['admin_db'],
                   target_session_attrs='read-write')


def login_sql(module, c, login, password, exists):
    """CREATE ROLE (or bring an existing login back in line): its own limits, whatever the defaults."""
    p = module.params
    ident = sql.Identifier(login)
    if not exists:
        # the verifier, not the password, goes into the statement (and so into any server log)
        verifier = c.pgconn.encrypt_password(password.encode('utf-8'), login.encode('utf-8'),
                                             b'scram-sha-256').decode('ascii')
        c.execute(sql.SQL('CREATE ROLE {} LOGIN PASSWORD {} NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
                          'NOBYPASSRLS').format(ident, sql.Literal(verifier)))
    c.execute(sql.SQL('ALTER ROLE {} LOGIN CONNECTION LIMIT {}').format(ident, sql.Literal(p['connection_limit'])))
    for name, value in sorted(p['session_settings'].items()):
        c.execute(sql.SQL('ALTER ROLE {} SET {} = {}').format(ident, sql.Identifier(name), sql.Literal(str(value))))
    if not c.execute('SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user').fetchone()['rolsuper']:
        # an administrator with CREATEDB and CREATEROLE, not a superuser, acts as the login it made: to give it its
        # database, revoke PUBLIC's access and apply the files as the login
        c.execute(sql.SQL('GRANT {} TO CURRENT_USER').format(ident))


def provision(module, c, step, files):
    """The tenant's login and database on its cluster, and the migration files not applied yet."""
    p = module.params
    after, before = step['after'], step['before']
    login, database = after['login'], after['database']
    exists = step['exists']
    login_sql(module, c, login, step['password'], exists['role'])
    if not exists['db']:
        template = p['template'] or 'template1'
        c.execute(sql.SQL('CREATE DATABASE {} OWNER {} TEMPLATE {}').format(
            sql.Identifier(database), sql.Identifier(login), sql.Identifier(template)))
    # only the tenant's login connects (a database's owner keeps its own privileges)
    c.execute(sql.SQL('REVOKE ALL ON DATABASE {} FROM PUBLIC').format(sql.Identifier(database)))
    done = len(before['migrations']) if before else 0
    if len(files) > done:
        apply_migrations(module, step, files[done:])


def apply_migrations(module, step, files):
    """Apply the files in one transaction, as the tenant's login, so nothing the tenant owns runs as this login;
    a ledger in the tenant's database (owned by the tenant) makes a retry after a lost registry write safe."""
    after = step['after']
    cluster = step['cluster']
    with cluster_connection(module, cluster, after['database']) as t:
        t.autocommit = False
        with t.transaction():
            t.execute(sql.SQL('SET LOCAL ROLE {}').format(sql.Identifier(after['login'])))
            # the files are the application's, written for PostgreSQL's usual search_path
            t.execute('SET LOCAL search_path = "$user", public')
            t.execute('CREATE TABLE IF NOT EXISTS public.selfbase_migrations (name text PRIMARY KEY, sha256 text '
                      'NOT NULL, applied_at timestamptz NOT NULL DEFAULT pg_catalog.now())')
            done = dict((r['name'], r['sha256']) for r in t.execute('SELECT name, sha256 FROM public.selfbase_migrations'))
            for f in files:
                if f['name'] in done:
                    if done[f['name']] != f['sha256']:
                        raise InputError('migrations: %s was applied to %s with other contents'
                                         % (f['name'], after['database']))
                    continue
                t.execute(f['sql'].encode('utf-8'))
                t.execute('INSERT INTO public.selfbase_migrations (name, sha256) VALUES (%s, %s)',
                          (f['name'], f['sha256']))


def unprovision(c, step):
    """Retire (the login may no longer connect; its sessions end) or drop the tenant's database and login."""
    before = step['before']
    login, database = sql.Identifier(before['login']), sql.Identifier(before['database'])
    if step['after'] is None:
        c.execute(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(database))
        c.execute(sql.SQL('DROP ROLE IF EXISTS {}').format(login))
    elif c.execute('SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s', (before['login'],)).fetchone():
        c.execute(sql.SQL('ALTER ROLE {} NOLOGIN').format(login))
        c.execute('SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity '
                  'WHERE usename = %s', (before['login'],))


def write_rows(conn, steps, final):
    """The registry rows: first as provisioning (or as they end, for what needs no cluster), then as they end."""
    with conn.transaction():
        for s in steps:
            after = s['after']
            if after is None:
                if final:
                    conn.execute('DELETE FROM platform.tenant_placements WHERE tenant_id = %s', (s['id'],))
                continue
            state = after['state'] if final or after['tier'] == 'pooled' else 'provisioning'
            migrations = after['migrations'] if final else (s['before'] or {}).get('migrations', [])
            conn.execute(
                'INSERT INTO platform.tenant_placements (tenant_id, tier, cluster, database, login, state, migrations) '
                'VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id) DO UPDATE SET state = EXCLUDED.state, '
                'migrations = EXCLUDED.migrations', (s['id'], after['tier'], after['cluster'], after['database'],
                                                     after['login'], state, jsonb(migrations)))
        if final:
            with conn.cursor() as cur:
                for s in steps:
                    action = 'create' if s['before'] is None else 'delete' if s['after'] is None else 'update'
                    audit(cur, 'tenant_placement', s['tenant'], action, s['before'], s['after'], tenant_id=s['id'])


def placement_run(module, conn):
    """selfbase.platform.tenant_placement: place, retire or drop tenants' databases."""
    p = module.params
    wanted = normalise(p)
    files = read_migrations(p['migrations'])
    require_schema(module, conn, '0010', dict(changed=bool(wanted)))
    with held_control_lock(module, 'tenant_placement'):
        steps, clusters, final = plan(module, conn, wanted, files)
        if steps and not module.check_mode:
            write_rows(conn, steps, final=False)
            for s in steps:
                target = (s['after'] or s['before'])
                if target['tier'] == 'pooled':
                    continue
                s['cluster'] = clusters[target['cluster']]
                with cluster_connection(module, s['cluster']) as c:
                    if s['after'] is None or s['after']['state'] == 'retired':
                        unprovision(c, s)
                    else:
                        provision(module, c, s, files)
            write_rows(conn, steps, final=True)
    result = dict(changed=bool(steps), changes=[
        dict(tenant=s['tenant'], action='create' if s['before'] is None else 'drop' if s['after'] is None else
             'retire' if s['after']['state'] == 'retired' else 'update') for s in steps],
        placements=[dict(final[slug] or dict(tier='pooled', state='absent'), tenant=slug) for slug in sorted(wanted)])
    if module._diff:
        result['diff'] = [dict(before_header=s['tenant'], after_header=s['tenant'], before=s['before'] or {},
                               after=s['after'] or {}) for s in steps]
    return result


# Routes -----------------------------------------------------------------------------------------------------------

def read_routes(conn, addresses):
    """The active placements with a database, and where applications reach each (the cluster's address, or the
    override given for it); and the registry's version."""
    version = conn.execute('SELECT version FROM platform.placement_version').fetchone()['version']
    rows = conn.execute(
        "SELECT t.slug AS tenant, p.tier, p.cluster, c.host, c.port, p.database, p.login "
        "FROM platform.tenant_placements p JOIN platform.tenants t ON t.id = p.tenant_id "
        "JOIN platform.clusters c ON c.name = p.cluster WHERE p.state = 'active' ORDER BY t.slug").fetchall()
    routes = []
    for r in rows:
        route = dict(r)
        route.update(addresses.get(r['cluster']) or {})
        routes.append(route)
    return version, routes


def pgbouncer_databases(routes, pool_size):
    """PgBouncer's [databases] section: one entry a tenant, named by its slug. Nothing in it but the routes, so it
    changes only when a route does."""
    lines = ['[databases]']
    for r in routes:
        # slugs are [a-z0-9-], which PgBouncer takes unquoted (1.18 refuses quoted names)
        entry = '%s = host=%s port=%d dbname=%s' % (r['tenant'], r['host'], r['port'], r['database'])
        if pool_size:
            entry += ' pool_size=%d' % pool_size
        lines.append(entry)
    return '\n'.join(lines) + '\n'


def routes_run(module, conn):
    """selfbase.platform.tenant_routes: read the routes and, with dest, write PgBouncer's file of them."""
    p = module.params
    addresses = {}
    for name, value in (p['cluster_addresses'] or {}).items():
        if not isinstance(value, dict) or set(value) - set(('host', 'port')):
            raise InputError('cluster_addresses.%s: a dict with host and port' % name)
        addresses[name] = value
    require_schema(module, conn, '0010', dict(changed=False, version=0, routes=[], databases='[databases]\n'))
    version, routes = read_routes(conn, addresses)
    content = pgbouncer_databases(routes, p['pool_size'])
    result = dict(changed=False, version=version, routes=json_safe(routes), databases=content)
    if p['dest']:
        try:
            with open(p['dest']) as fh:
                old = fh.read()
        except (IOError, OSError):
            old = None
        if old != content:
            result['changed'] = True
            if module._diff:
                result['diff'] = dict(before=old or '', after=content, before_header=p['dest'], after_header=p['dest'])
            if not module.check_mode:
                tmp = '%s.tmp-%d' % (p['dest'], os.getpid())
                with open(tmp, 'w') as fh:
                    fh.write(content)
                module.atomic_move(tmp, p['dest'])
        file_args = module.load_file_common_arguments(module.params, path=p['dest'])
        if os.path.exists(p['dest']):
            result['changed'] = module.set_fs_attributes_if_different(file_args, result['changed'])
    return result
