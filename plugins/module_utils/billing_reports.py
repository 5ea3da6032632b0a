# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Billing reports from the mirrors that the webhook receiver keeps (migration 0006): per tenant, its plan,
subscription, dunning, payment method, usage against quota, last invoices, amount due and overage that is never
billed (migration 0012); platform-wide, the
month's MRR movements."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import re

TENANTS = '''
WITH unbilled AS (
  SELECT u.tenant_id, json_agg(json_build_object('metric', u.metric, 'reason', u.reason, 'quantity', u.quantity,
                                                 'since', u.since) ORDER BY u.metric) AS items
    FROM platform.unbilled_overage() u GROUP BY u.tenant_id)
SELECT t.slug, t.name, t.status, t.plan_code AS plan,
       CASE WHEN s.tenant_id IS NULL THEN NULL ELSE json_build_object(
         'id', s.stripe_subscription_id, 'status', s.status, 'current_period_start', s.current_period_start,
         'current_period_end', s.current_period_end, 'cancel_at_period_end', s.cancel_at_period_end,
         'trial_end', s.trial_end, 'synced_at', s.synced_at) END AS subscription,
       CASE WHEN d.tenant_id IS NULL THEN NULL ELSE json_build_object(
         'state', d.state, 'reason', d.reason, 'since', d.since, 'grace_ends_at', d.grace_ends_at) END AS dunning,
       json_build_object('present', COALESCE(c.has_payment_method, false), 'brand', c.brand, 'last4', c.last4)
         AS payment_method,
       COALESCE((SELECT json_agg(json_build_object('metric', q.metric, 'used', q.used, 'limit', q.limit_value,
                                                   'percent', q.percent, 'status', q.status, 'period', q.period)
                                 ORDER BY q.metric)
                   FROM platform.quota_status(t.id) q), '[]') AS usage,
       COALESCE((SELECT json_agg(i ORDER BY i.created DESC) FROM (
                   SELECT v.stripe_invoice_id AS id, v.number, v.status, v.currency, v.amount_due, v.amount_paid,
                          v.amount_remaining, v.period_start, v.period_end, v.hosted_invoice_url, v.invoice_pdf,
                          v.created
                     FROM platform.invoices v WHERE v.tenant_id = t.id
                    ORDER BY v.created DESC LIMIT %(invoices)s) i), '[]') AS invoices,
       COALESCE((SELECT json_object_agg(o.currency, o.due) FROM (
                   SELECT v.currency, sum(v.amount_remaining) AS due FROM platform.invoices v
                    WHERE v.tenant_id = t.id AND v.status = 'open' GROUP BY v.currency) o), '{}') AS amount_due,
       COALESCE(ub.items, '[]') AS unbilled_overage
  FROM platform.tenants t
  LEFT JOIN unbilled ub ON ub.tenant_id = t.id
  LEFT JOIN platform.subscriptions s ON s.tenant_id = t.id
  LEFT JOIN platform.tenant_dunning d ON d.tenant_id = t.id
  LEFT JOIN platform.customer_payment_state c ON c.tenant_id = t.id
 WHERE t.status <> 'deleted' AND (%(slugs)s::text[] IS NULL OR t.slug = ANY(%(slugs)s::text[]))
 ORDER BY t.slug'''

# A subscription counts from its start (after any trial) until it is canceled, at its plan price (a year's
# price over 12). Incomplete subscriptions never counted.
MRR = '''
WITH b AS (SELECT %(start)s::timestamptz AS m0,
                  LEAST(%(start)s::timestamptz + interval '1 month', now()) AS m1),
subs AS (
  SELECT p.currency, CASE p.billing_cycle WHEN 'year' THEN p.unit_amount / 12.0 ELSE p.unit_amount END AS monthly,
         GREATEST(s.started_at, COALESCE(s.trial_end, s.started_at)) AS paying_from, s.canceled_at
    FROM platform.subscriptions s
    JOIN platform.plan_prices p ON p.stripe_price_id = s.stripe_price_id
   WHERE s.started_at IS NOT NULL AND s.status NOT IN ('incomplete', 'incomplete_expired')),
f AS (
  SELECT subs.currency, subs.monthly,
         subs.paying_from <= b.m0 AND (subs.canceled_at IS NULL OR subs.canceled_at > b.m0) AS at_start,
         subs.paying_from <= b.m1 AND (subs.canceled_at IS NULL OR subs.canceled_at > b.m1) AS at_end
    FROM subs, b)
SELECT f.currency,
       COALESCE(sum(f.monthly) FILTER (WHERE f.at_start), 0) AS mrr_start,
       COALESCE(sum(f.monthly) FILTER (WHERE f.at_end AND NOT f.at_start), 0) AS new,
       COALESCE(sum(f.monthly) FILTER (WHERE f.at_start AND NOT f.at_end), 0) AS churned,
       COALESCE(sum(f.monthly) FILTER (WHERE f.at_end), 0) AS mrr_end,
       count(*) FILTER (WHERE f.at_end AND NOT f.at_start) AS new_subscriptions,
       count(*) FILTER (WHERE f.at_start AND NOT f.at_end) AS churned_subscriptions
  FROM f GROUP BY f.currency ORDER BY f.currency'''


def month_start(month, today=None):
    """The first instant of ``month`` (YYYY-MM, default the current month, UTC)."""
    if not month:
        today = today or datetime.datetime.now(datetime.timezone.utc)
        return datetime.datetime(today.year, today.month, 1, tzinfo=datetime.timezone.utc)
    if not re.match(r'^\d{4}-(0[1-9]|1[0-2])$', month):
        raise ValueError('month must be YYYY-MM, got %r' % month)
    return datetime.datetime(int(month[:4]), int(month[5:]), 1, tzinfo=datetime.timezone.utc)


def report(conn, slugs=None, month=None, invoices=3, with_tenants=True):
    start = month_start(month)
    tenants = conn.execute(TENANTS, dict(slugs=slugs, invoices=invoices)).fetchall() if with_tenants else []
    mrr = []
    for row in conn.execute(MRR, dict(start=start)).fetchall():
        row = dict(row)
        for key in ('mrr_start', 'new', 'churned', 'mrr_end'):
            row[key] = round(float(row[key]), 2)
        row['net'] = round(row['mrr_end'] - row['mrr_start'], 2)
        mrr.append(row)
    return dict(month=start.strftime('%Y-%m'), tenants=tenants, mrr=mrr)
