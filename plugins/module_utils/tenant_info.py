# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The query behind selfbase.platform.tenant_info: the tenants with their domains and, optionally, their usage
against quota, for every tenant in one pass over each usage table.

platform.quota_status(tenant) defines a tenant's usage; calling it once per tenant (a plan and a few queries for
each of its metrics) took about 20 s for 10,000 tenants. USAGE computes the same rows set-based from the same
functions (period_start, period_end, quota_state, clamp_int8, may_act_for); the module tests compare the two for
every kind of metric and period."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

STATUSES = ['trial', 'active', 'past_due', 'suspended', 'canceled', 'deleted']

SELECTED = '''
WITH t AS (
  SELECT t.* FROM platform.tenants t
   WHERE t.status = ANY(%(status)s)
     AND (%(slugs)s::text[] IS NULL OR t.slug = ANY(%(slugs)s::text[]))
     AND (%(plans)s::text[] IS NULL OR t.plan_code = ANY(%(plans)s::text[]))
)'''

# effective_quotas(), metric_usage_at() and quota_status() for the selected tenants at once
USAGE = ''',
q AS (
  SELECT tq.tenant_id, tq.metric, tq.limit_value, tq.period, tq.mode
    FROM platform.tenant_quotas tq JOIN t ON t.id = tq.tenant_id
  UNION ALL
  SELECT t.id, pq.metric, pq.limit_value, pq.period, pq.mode
    FROM t JOIN platform.plan_quotas pq ON pq.plan_code = t.plan_code
   WHERE NOT EXISTS (SELECT FROM platform.tenant_quotas tq WHERE tq.tenant_id = t.id AND tq.metric = pq.metric)
),
w AS (
  SELECT q.*, m.source, platform.period_start(q.period, now()) AS p_from, platform.period_end(q.period, now()) AS p_to
    FROM q LEFT JOIN platform.metrics m ON m.name = q.metric
   WHERE platform.may_act_for(q.tenant_id)
),
members AS (
  SELECT tenant_id, count(*) AS n FROM platform.tenant_members
   WHERE tenant_id IN (SELECT tenant_id FROM w WHERE source = 'members') GROUP BY tenant_id
),
projects AS (
  SELECT tenant_id, count(*) AS n FROM platform.projects
   WHERE tenant_id IN (SELECT tenant_id FROM w WHERE source = 'projects') GROUP BY tenant_id
),
hourly AS (
  SELECT w.tenant_id, w.metric, platform.clamp_int8(sum(e.quantity)) AS n
    FROM w JOIN platform.usage_events e ON e.tenant_id = w.tenant_id AND e.metric = w.metric
     AND e.occurred_at >= w.p_from AND e.occurred_at < w.p_to
   WHERE w.source IS DISTINCT FROM 'members' AND w.source IS DISTINCT FROM 'projects' AND w.period = 'hour'
   GROUP BY w.tenant_id, w.metric
),
daily AS (
  SELECT w.tenant_id, w.metric, platform.clamp_int8(sum(r.quantity)) AS n
    FROM w JOIN platform.usage_rollups_daily r ON r.tenant_id = w.tenant_id AND r.metric = w.metric
     AND (w.period = 'none' OR (r.day >= (w.p_from AT TIME ZONE 'UTC')::date AND r.day < (w.p_to AT TIME ZONE 'UTC')::date))
   WHERE w.source IS DISTINCT FROM 'members' AND w.source IS DISTINCT FROM 'projects' AND w.period <> 'hour'
   GROUP BY w.tenant_id, w.metric
),
s AS (
  SELECT w.tenant_id, w.metric, w.limit_value, w.mode, w.period,
         CASE w.source WHEN 'members' THEN COALESCE(mb.n, 0) WHEN 'projects' THEN COALESCE(pr.n, 0)
              ELSE COALESCE(h.n, d.n, 0) END AS used
    FROM w
    LEFT JOIN members mb ON w.source = 'members' AND mb.tenant_id = w.tenant_id
    LEFT JOIN projects pr ON w.source = 'projects' AND pr.tenant_id = w.tenant_id
    LEFT JOIN hourly h ON h.tenant_id = w.tenant_id AND h.metric = w.metric
    LEFT JOIN daily d ON d.tenant_id = w.tenant_id AND d.metric = w.metric
),
rated AS (
  SELECT s.*, platform.quota_state(s.used, s.limit_value) AS status FROM s
),
u AS (
  SELECT s.tenant_id,
         json_agg(json_build_object(
           'metric', s.metric, 'used', s.used, 'limit', s.limit_value,
           'percent', CASE WHEN s.limit_value IS NULL THEN NULL WHEN s.limit_value = 0 THEN 100.0
                           ELSE round(s.used * 100.0 / s.limit_value, 2) END,
           'status', s.status, 'mode', s.mode, 'period', s.period)
           ORDER BY s.metric) AS usage,
         CASE WHEN bool_or(s.status = 'exceeded') THEN 'exceeded'
              WHEN bool_or(s.status = 'warning') THEN 'warning'
              ELSE 'ok' END AS worst
    FROM rated s GROUP BY s.tenant_id
)'''

COLUMNS = '''
SELECT t.id, t.slug, t.name, t.status, t.plan_code AS plan, t.billing_cycle, t.trial_ends_at, t.created_at,
       COALESCE(d.domains, '[]'::json) AS domains'''

USAGE_COLUMNS = ''',
       COALESCE(u.usage, '[]'::json) AS usage, COALESCE(u.worst, 'ok') AS quota_status'''

FROM = '''
  FROM t
  LEFT JOIN (SELECT d.tenant_id, json_agg(json_build_object('domain', d.domain, 'primary', d.is_primary,
                                                            'verified', d.verified)
                                          ORDER BY d.is_primary DESC, d.domain) AS domains
               FROM platform.tenant_domains d WHERE d.tenant_id IN (SELECT id FROM t) GROUP BY d.tenant_id) d
    ON d.tenant_id = t.id'''


def build_query(include_usage):
    if include_usage:
        return SELECTED + USAGE + COLUMNS + USAGE_COLUMNS + FROM + '\n  LEFT JOIN u ON u.tenant_id = t.id\n ORDER BY t.slug'
    return SELECTED + COLUMNS + FROM + '\n ORDER BY t.slug'


def read_tenants(conn, status, slugs, plans, include_usage):
    """The tenants that match, ordered by slug, as tenant_info returns them."""
    return conn.execute(build_query(include_usage), dict(status=status, slugs=slugs, plans=plans)).fetchall()
