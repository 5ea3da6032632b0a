# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0017: plan changes made in Stripe come back to the tenant.

A subscription's plan is the plan that owns its licensed price in the platform's own price records
(platform.plan_prices), not what its metadata says: the Customer Portal, Checkout and the dashboard change the price
and leave the metadata. When the price of a tenant's live subscription changes in Stripe, the tenant's plan and
billing cycle follow (so do its quotas, which are read through its plan), the tenant's plan_source becomes
'customer', and the change is audited. A price that no plan owns is not adopted: the event's outcome is
'unknown_price' and the tenant keeps its plan. selfbase.platform.tenants leaves a customer's plan alone (see its
plan_source option). The tenant row is locked first, so an event waits for a tenant_subscription run that holds it.
stripe_event_apply is replaced by the 0014 function with those edits; no new table, function or role."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.selfbase.platform.plugins.module_utils.migrations import v0014_tax as _v0014

VERSION = "0017"
NAME = "self_serve_plans"

_EDITS = [
    ("  v_held record;\n",
     "  v_held record;\n"
     "  v_old_price pg_catalog.text;\n"
     "  v_plan_code pg_catalog.text;\n"
     "  v_plan_cycle pg_catalog.text;\n"),
    # a tenant_subscription run holds this lock until it has written the mirror
    ("SELECT t.id, t.slug INTO v_tenant FROM platform.tenants t WHERE t.stripe_customer_id = v_customer;",
     "SELECT t.id, t.slug INTO v_tenant FROM platform.tenants t WHERE t.stripe_customer_id = v_customer\n"
     "       FOR UPDATE;"),
    ("        -- a first sighting gets its row, which the update below fills\n",
     "        SELECT s.stripe_price_id INTO v_old_price FROM platform.subscriptions s WHERE s.tenant_id = v_tenant.id;\n"
     "        -- the plan that owns the licensed price, in the platform's own price records\n"
     "        SELECT pp.plan_code, pp.billing_cycle INTO v_plan_code, v_plan_cycle\n"
     "          FROM platform.plan_prices pp WHERE pp.stripe_price_id = v_price;\n"
     "        -- a first sighting gets its row, which the update below fills\n"),
    ("               -- metadata names a plan only when it is active and the subscription's price is one of its own\n"
     "               plan_code = COALESCE((SELECT p.code FROM platform.plans p\n"
     "                                       JOIN platform.plan_prices pp ON pp.plan_code = p.code\n"
     "                                      WHERE p.code = p_object #>> '{metadata,plan_code}' AND p.active\n"
     "                                        AND pp.stripe_price_id = v_price LIMIT 1),\n"
     "                                    s.plan_code),\n",
     "               plan_code = COALESCE(v_plan_code, s.plan_code),\n"),
    ("          outcome := 'stale';  -- about a subscription other than the tenant's live one\n",
     "          outcome := 'stale';  -- about a subscription other than the tenant's live one\n"
     "        ELSIF v_price IS NOT NULL AND v_plan_code IS NULL THEN\n"
     "          outcome := 'unknown_price';  -- no plan of the platform's owns it: the tenant keeps its plan\n"
     "        ELSIF v_plan_code IS NOT NULL AND v_price IS DISTINCT FROM v_old_price\n"
     "              AND p_object ->> 'status' NOT IN ('canceled', 'incomplete_expired') THEN\n"
     "          -- the price changed in Stripe (Checkout, the portal, the dashboard): the plan follows\n"
     "          INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action, before, after)\n"
     "          SELECT t.id, 'tenant_plan', t.slug, 'update',\n"
     "                 pg_catalog.jsonb_build_object('plan', t.plan_code, 'billing_cycle', t.billing_cycle,\n"
     "                                               'plan_source', t.plan_source),\n"
     "                 pg_catalog.jsonb_build_object('plan', v_plan_code, 'billing_cycle', v_plan_cycle,\n"
     "                                               'plan_source', 'customer', 'stripe_price_id', v_price)\n"
     "            FROM platform.tenants t\n"
     "           WHERE t.id = v_tenant.id\n"
     "             AND (t.plan_code, t.billing_cycle, t.plan_source) IS DISTINCT FROM\n"
     "                 (v_plan_code, v_plan_cycle, 'customer');\n"
     "          UPDATE platform.tenants t\n"
     "             SET plan_code = v_plan_code, billing_cycle = v_plan_cycle, plan_source = 'customer',\n"
     "                 updated_at = pg_catalog.now()\n"
     "           WHERE t.id = v_tenant.id\n"
     "             AND (t.plan_code, t.billing_cycle, t.plan_source) IS DISTINCT FROM\n"
     "                 (v_plan_code, v_plan_cycle, 'customer');\n"),
]


def _event_apply():
    body = _v0014._event_apply()
    for old, new in _EDITS:
        if body.count(old) != 1:
            raise ValueError('migration 0017: the anchor %r in stripe_event_apply moved' % old)
        body = body.replace(old, new)
    return body


SQL = r"""
-- selfbase platform schema, version 0017: plan changes made in Stripe come back to the tenant.
SET LOCAL ROLE selfbase_owner;
-- who chose the tenant's plan last: the operator (the tenants file, tenant_subscription) or the customer (Stripe)
ALTER TABLE platform.tenants
  ADD COLUMN plan_source text NOT NULL DEFAULT 'operator' CHECK (plan_source IN ('operator', 'customer'));
ALTER TABLE platform.stripe_events DROP CONSTRAINT stripe_events_outcome_check,
  ADD CONSTRAINT stripe_events_outcome_check
  CHECK (outcome IN ('pending', 'applied', 'stale', 'ignored', 'unknown_customer', 'refused', 'unknown_price'));
GRANT UPDATE (plan_code, billing_cycle, plan_source) ON platform.tenants TO selfbase_billing_definer;
RESET ROLE;

""" + _event_apply()
