# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One tenant's quota override (the selfbase.platform.tenant_quota module): what a run leaves in
platform.tenant_quotas, and what is in force after it (the override, or else the plan's quota)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from decimal import Decimal

from ansible_collections.selfbase.platform.plugins.module_utils.postgres import audit, control_lock, require_schema
from ansible_collections.selfbase.platform.plugins.module_utils.quotas import (
    QuotaError, decimal_text, parse_limit, parse_price)

FIELDS = ('limit', 'period', 'mode', 'overage_price')
_QUOTA = 'SELECT limit_value, period, mode, overage_unit_price FROM platform.%s WHERE %s AND metric = %%s'


def row_to_quota(row):
    """A quota row (tenant_quotas, plan_quotas or effective_quotas) as normalised values."""
    if row is None:
        return None
    return dict(limit=row['limit_value'], period=row['period'], mode=row['mode'],
                overage_price=None if row['overage_unit_price'] is None else Decimal(row['overage_unit_price']))


def public(quota, **extra):
    """A normalised quota as returned to the user and written to the audit log."""
    if quota is None:
        return None
    out = dict(extra)
    out.update(limit=quota['limit'], period=quota['period'], mode=quota['mode'],
               overage_price=decimal_text(quota['overage_price']))
    return out


def wanted(p, before, plan, limit, price):
    """The override after the run: a new one starts from the plan's quota, an existing one from itself."""
    if p['state'] == 'absent':
        return None
    after = dict(before or plan or dict(limit=None, period='month', mode='hard', overage_price=None))
    if p['limit'] is not None:
        after['limit'] = limit
    for field in ('period', 'mode'):
        if p[field] is not None:
            after[field] = p[field]
    if p['overage_price'] is not None:
        after['overage_price'] = price
    return after


def write(conn, tenant_id, metric, before, after, audit_key):
    if after is None:
        conn.execute('DELETE FROM platform.tenant_quotas WHERE tenant_id = %s AND metric = %s', (tenant_id, metric))
    else:
        conn.execute(
            'INSERT INTO platform.tenant_quotas AS q (tenant_id, metric, limit_value, period, mode, overage_unit_price) '
            'VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id, metric) DO UPDATE SET '
            'limit_value = EXCLUDED.limit_value, period = EXCLUDED.period, mode = EXCLUDED.mode, '
            'overage_unit_price = EXCLUDED.overage_unit_price',
            (tenant_id, metric, after['limit'], after['period'], after['mode'], after['overage_price']))
    slug = audit_key.split('/')[0]
    with conn.cursor() as cur:
        audit(cur, 'tenant_quota', audit_key, 'create' if before is None else ('delete' if after is None else 'update'),
              public(before, tenant=slug, metric=metric), public(after, tenant=slug, metric=metric),
              tenant_id=tenant_id)


def run(module, conn):
    """Validate, plan and (unless in check mode) write the override; returns the module's result."""
    p = module.params
    slug, metric = p['tenant'], p['metric']
    price = parse_price(p['overage_price'], 'overage_price')     # before the database is read
    require_schema(module, conn, '0003', dict(changed=p['state'] == 'present'))
    tenant = conn.execute('SELECT id, status, plan_code FROM platform.tenants WHERE slug = %s', (slug,)).fetchone()
    if tenant is None:
        raise QuotaError('tenant: no tenant with slug %r' % slug)
    if tenant['status'] == 'deleted':
        raise QuotaError('tenant: tenant %r is deleted; restore it with selfbase.platform.tenant first' % slug)
    tenant_id = tenant['id']
    metrics = dict((r['name'], r['unit']) for r in conn.execute('SELECT name, unit FROM platform.metrics ORDER BY name'))
    if metric not in metrics:
        raise QuotaError('metric: unknown metric %r; known metrics: %s' % (metric, ', '.join(sorted(metrics))))
    limit = parse_limit(p['limit'], 'limit', metrics[metric])

    with conn.transaction():
        if not module.check_mode:  # serialise runs until the transaction ends
            control_lock(conn.cursor(), 'tenant_quota')
        before = row_to_quota(conn.execute(_QUOTA % ('tenant_quotas', 'tenant_id = %s'), (tenant_id, metric)).fetchone())
        plan = row_to_quota(conn.execute(_QUOTA % ('plan_quotas', 'plan_code = %s'),
                                         (tenant['plan_code'], metric)).fetchone())
        after = wanted(p, before, plan, limit, price)
        changed = before != after
        if changed and not module.check_mode:
            write(conn, tenant_id, metric, before, after, '%s/%s' % (slug, metric))

    if module.check_mode:  # predict what a real run leaves in force
        effective = after if after is not None else plan
    else:
        after = row_to_quota(conn.execute(_QUOTA % ('tenant_quotas', 'tenant_id = %s'), (tenant_id, metric)).fetchone())
        effective = row_to_quota(conn.execute(
            'SELECT limit_value, period, mode, overage_unit_price FROM platform.effective_quotas(%s) '
            'WHERE metric = %s', (tenant_id, metric)).fetchone())
    result = dict(changed=changed, tenant_id=str(tenant_id), quota=public(after, tenant=slug, metric=metric),
                  effective=public(effective, metric=metric, source='tenant' if after is not None else 'plan'))
    if module._diff:
        result['diff'] = dict(before=public(before, tenant=slug, metric=metric) or {},
                              after=public(after, tenant=slug, metric=metric) or {})
    return result
