# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Billing reports from the mirrors that the webhook receiver keeps (migration 0006): per tenant, its plan,
subscription, dunning, payment method, usage against quota, last invoices, amount due and overage that is never
billed (migration 0012); platform-wide, the
month's MRR movements (migration 0013)."""

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
       CASE WHEN c.tenant_id IS NULL THEN NULL ELSE json_build_object(
         'country', c.address ->> 'country', 'tax_exempt', c.tax_exempt, 'location', c.tax_location,
         'tax_ids', c.tax_ids) END AS tax,
       COALESCE((SELECT json_agg(json_build_object('metric', q.metric, 'used', q.used, 'limit', q.limit_value,
                                                   'percent', q.percent, 'status', q.status, 'period', q.period)
                                 ORDER BY q.metric)
                   FROM platform.quota_status(t.id) q), '[]') AS usage,
       COALESCE((SELECT json_agg(i ORDER BY i.created DESC) FROM (
                   SELECT v.stripe_invoice_id AS id, v.number, v.status, v.currency, v.amount_due, v.amount_paid,
                          v.amount_remaining, v.total, v.tax, v.total_excluding_tax, v.period_start, v.period_end,
                          v.hosted_invoice_url, v.invoice_pdf, v.created
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

# Per tenant and currency, MRR at the month's start and end (platform.mrr_at, migration 0013: the subscription's
# version in force then, after recurring discounts); the difference is new (never paid before), reactivated,
# expansion, contraction or churned.
MRR = '''
WITH b AS (SELECT %(start)s::timestamptz AS m0,
                  LEAST(%(start)s::timestamptz + interval '1 month', now()) AS m1),
j AS (
  SELECT COALESCE(s.tenant_id, e.tenant_id) AS tenant_id, COALESCE(s.currency, e.currency) AS currency,
         COALESCE(s.mrr, 0) AS s, COALESCE(e.mrr, 0) AS e
    FROM (SELECT m.* FROM b, platform.mrr_at(b.m0) m) s
    FULL JOIN (SELECT m.* FROM b, platform.mrr_at(b.m1) m) e ON e.tenant_id = s.tenant_id AND e.currency = s.currency),
k AS (
  SELECT j.currency, j.s, j.e, COALESCE(f.since < b.m0, false) AS paid_before
    FROM j CROSS JOIN b LEFT JOIN platform.mrr_first_paying() f ON f.tenant_id = j.tenant_id)
SELECT k.currency,
       COALESCE(sum(k.s), 0) AS mrr_start,
       COALESCE(sum(k.e) FILTER (WHERE k.s = 0 AND k.e > 0 AND NOT k.paid_before), 0) AS new,
       COALESCE(sum(k.e) FILTER (WHERE k.s = 0 AND k.e > 0 AND k.paid_before), 0) AS reactivated,
       COALESCE(sum(k.e - k.s) FILTER (WHERE k.s > 0 AND k.e > k.s), 0) AS expansion,
       COALESCE(sum(k.s - k.e) FILTER (WHERE k.s > 0 AND k.e > 0 AND k.e < k.s), 0) AS contraction,
       COALESCE(sum(k.s) FILTER (WHERE k.s > 0 AND k.e = 0), 0) AS churned,
       COALESCE(sum(k.e), 0) AS mrr_end,
       count(*) FILTER (WHERE k.s = 0 AND k.e > 0 AND NOT k.paid_before) AS new_subscriptions,
       count(*) FILTER (WHERE k.s = 0 AND k.e > 0 AND k.paid_before) AS reactivated_subscriptions,
       count(*) FILTER (WHERE k.s > 0 AND k.e = 0) AS churned_subscriptions
  FROM k GROUP BY k.currency HAVING sum(k.s) > 0 OR sum(k.e) > 0 ORDER BY k.currency'''
MOVEMENTS = ('mrr_start', 'new', 'reactivated', 'expansion', 'contraction', 'churned', 'mrr_end')


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
        for key in MOVEMENTS:
            row[key] = round(float(row[key]), 2)
        row['net'] = round(row['mrr_end'] - row['mrr_start'], 2)
        mrr.append(row)
    return dict(month=start.strftime('%Y-%m'), tenants=tenants, mrr=mrr)
