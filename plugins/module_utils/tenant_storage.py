# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage of tenant databases (migration 0015), for selfbase.platform.tenant_storage: each placed database's size
is read on its cluster and compared with the size last recorded; a difference becomes one storage_bytes usage event
of the tenant, written in the same transaction as the new size, so a retry after any failure counts nothing twice.
A database the registry no longer places (dropped) gives its last size back."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.selfbase.platform.plugins.module_utils.errors import ServiceError
from ansible_collections.selfbase.platform.plugins.module_utils.placements import cluster_connection, read_clusters
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import held_control_lock, require_schema

try:
    import psycopg
except ImportError:  # reported by postgres.connect()
    psycopg = None

METRIC = 'storage_bytes'


def measure(module, clusters, placed):
    """{(cluster, database): bytes} of the placed databases on each reachable cluster (a database that does not
    exist counts 0), and the clusters that could not be read."""
    sizes, unreachable = {}, []
    for name in sorted(set(p[0] for p in placed)):
        databases = [d for c, d in placed if c == name]
        try:
            with cluster_connection(module, clusters[name]) as c:
                found = dict((r['datname'], r['bytes']) for r in c.execute(
                    'SELECT datname, pg_catalog.pg_database_size(oid) AS bytes FROM pg_catalog.pg_database '
                    'WHERE datname = ANY(%s)', (databases,)))
        except (ServiceError, psycopg.Error) as e:
            module.warn('cluster %s: %s' % (name, str(e).strip()))
            unreachable.append(name)
            continue
        for d in databases:
            sizes[(name, d)] = found.get(d, 0)
    return sizes, unreachable


def plan(conn, sizes):
    """[{tenant, id, cluster, database, previous, bytes, delta, action}] against the recorded sizes: every placed
    database that was measured, and every recorded one the registry no longer places."""
    placed = dict(((r['cluster'], r['database']), r) for r in conn.execute(
        'SELECT p.cluster, p.database, p.tenant_id AS id, t.slug AS tenant FROM platform.tenant_placements p '
        'JOIN platform.tenants t ON t.id = p.tenant_id WHERE p.cluster IS NOT NULL'))
    recorded = dict(((r['cluster'], r['database']), r) for r in conn.execute(
        'SELECT s.cluster, s.database, s.tenant_id AS id, t.slug AS tenant, s.bytes FROM platform.tenant_database_sizes s '
        'JOIN platform.tenants t ON t.id = s.tenant_id'))
    rows = []
    for key in sorted(set(placed) | set(recorded)):
        now, last = placed.get(key), recorded.get(key)
        if now and last and now['id'] != last['id']:
            # the name was dropped and given to another tenant before a sample: give back, then count anew
            rows.append(row(last, key, last['bytes'], 0, 'delete'))
            last = None
        if now is None:
            rows.append(row(last, key, last['bytes'], 0, 'delete'))
        elif key in sizes:
            previous = last['bytes'] if last else 0
            action = 'keep' if last and previous == sizes[key] else 'update' if last else 'create'
            rows.append(row(now, key, previous, sizes[key], action))
        # else: on a cluster that could not be read, or placed since it was measured: the next run has it
    return rows


def row(tenant, key, previous, size, action):
    return dict(tenant=tenant['tenant'], id=tenant['id'], cluster=key[0], database=key[1], previous=previous,
                bytes=size, delta=size - previous, action=action)


def record(conn, rows):
    """The new sizes and one usage event per change, in the caller's transaction. Overage is counted as
    record_usage() counts it for a delta metric: the part of a growth above the limit."""
    at = conn.execute('SELECT pg_catalog.now() AS at').fetchone()['at']
    for r in rows:
        if r['action'] == 'keep':
            continue
        key = (r['cluster'], r['database'])
        if r['action'] == 'delete':
            conn.execute('DELETE FROM platform.tenant_database_sizes WHERE cluster = %s AND database = %s', key)
        else:
            conn.execute('INSERT INTO platform.tenant_database_sizes (cluster, database, tenant_id, bytes, sampled_at) '
                         'VALUES (%s, %s, %s, %s, %s) ON CONFLICT (cluster, database) DO UPDATE SET '
                         'bytes = EXCLUDED.bytes, sampled_at = EXCLUDED.sampled_at', key + (r['id'], r['bytes'], at))
        if r['delta'] == 0:
            continue
        # the rollup trigger acts for this tenant (row-level security is forced on its owner)
        conn.execute("SELECT pg_catalog.set_config('app.tenant_id', %s, true)", (str(r['id']),))
        conn.execute('SELECT platform.lock_quota(%s, %s)', (r['id'], METRIC))
        q = conn.execute('SELECT c.used, c.limit_value, c.mode, e.overage_unit_price FROM '
                         'platform.check_quota_at(%s, %s, %s, %s) c LEFT JOIN platform.effective_quotas(%s) e '
                         'ON e.metric = %s', (r['id'], METRIC, r['delta'], at, r['id'], METRIC)).fetchone()
        event = conn.execute(
            'INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key, occurred_at) '
            'VALUES (%s, %s, %s, %s, %s) RETURNING id',
            (r['id'], METRIC, r['delta'], 'storage/%s/%s/%s' % (key + (at.isoformat(),)), at)).fetchone()['id']
        over = min(r['delta'], q['used'] + r['delta'] - q['limit_value']) \
            if q['mode'] == 'overage' and q['limit_value'] is not None else 0
        if over > 0:
            conn.execute('INSERT INTO platform.usage_overages (tenant_id, metric, usage_event_id, quantity, unit_price) '
                         'VALUES (%s, %s, %s, %s, %s)', (r['id'], METRIC, event, over, q['overage_unit_price']))
    conn.execute("SELECT pg_catalog.set_config('app.tenant_id', '', true)")


def storage_run(module, conn):
    """selfbase.platform.tenant_storage: sample every placed tenant database and record what changed."""
    require_schema(module, conn, '0015', dict(changed=False, samples=[], unreachable_clusters=[]))
    with held_control_lock(module, 'tenant_storage'):
        clusters = read_clusters(conn)
        placed = [(r['cluster'], r['database']) for r in conn.execute(
            'SELECT cluster, database FROM platform.tenant_placements WHERE cluster IS NOT NULL')]
        sizes, unreachable = measure(module, clusters, placed)
        with conn.transaction():
            rows = plan(conn, sizes)
            changes = [r for r in rows if r['action'] != 'keep']
            if changes and not module.check_mode:
                record(conn, changes)
    result = dict(changed=bool(changes), unreachable_clusters=unreachable,
                  samples=[dict((k, r[k]) for k in ('tenant', 'cluster', 'database', 'previous', 'bytes', 'delta',
                                                    'action')) for r in rows])
    if module._diff:
        result['diff'] = dict(
            before=dict(('%s/%s' % (r['cluster'], r['database']), r['previous']) for r in changes if r['action'] != 'create'),
            after=dict(('%s/%s' % (r['cluster'], r['database']), r['bytes']) for r in changes if r['action'] != 'delete'))
    if unreachable:
        module.fail_json(msg='cluster %s could not be read: its databases keep their last recorded size; the others '
                             'were recorded' % ', '.join(unreachable), **result)
    return result
