# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0019: Checkout and Customer Portal sessions for a tenant's admins.

The billing service answers a tenant's application (authenticated with the tenant's JWT) with a Stripe Checkout or
Customer Portal URL. What it may do for whom is data: billing_session_context() answers for an owner or admin of the
tenant only (platform.tenant_members), and gives the price of a plan only when the platform's own records list it
as active; billing_link_customer() records the Stripe customer the service created for a tenant that had none, once
(a tenant's customer is never replaced), audited. Both are definers owned by selfbase_billing_sessions, which reads
and writes those columns and nothing else; only the billing service's logins (selfbase_billing) execute them."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0019"
NAME = "billing_sessions"

SQL = r"""
-- selfbase platform schema, version 0019: Checkout and Customer Portal sessions for a tenant's admins.
DO $roles$
BEGIN
  -- Owns the functions the billing service asks before it opens a session. Nobody logs in as it.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'selfbase_billing_sessions') THEN
    CREATE ROLE selfbase_billing_sessions NOLOGIN NOBYPASSRLS;
  END IF;
END
$roles$;
GRANT USAGE ON SCHEMA platform TO selfbase_billing_sessions;

SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = pg_catalog, platform, pg_temp;

CREATE POLICY billing_sessions ON platform.tenants FOR SELECT TO selfbase_billing_sessions USING (true);
CREATE POLICY billing_sessions_link ON platform.tenants FOR UPDATE TO selfbase_billing_sessions
  USING (stripe_customer_id IS NULL) WITH CHECK (stripe_customer_id IS NOT NULL);
CREATE POLICY billing_sessions ON platform.tenant_members FOR SELECT TO selfbase_billing_sessions USING (true);
CREATE POLICY billing_sessions ON platform.subscriptions FOR SELECT TO selfbase_billing_sessions USING (true);
CREATE POLICY billing_sessions ON platform.audit_log FOR INSERT TO selfbase_billing_sessions
  WITH CHECK (entity = 'tenant_billing_customer');

-- What the billing service needs to open a session for p_user in p_tenant: the tenant, its Stripe customer (null
-- when it has none yet), the caller's membership role, the tenant's subscription, and, when p_plan is given, the
-- active price of that plan for the cycle and currency. Refused (42501) unless p_user is an owner or admin of the
-- tenant; an unknown or deleted tenant is refused the same way, so that nobody learns which tenants exist. With the
-- plan's price come its metered overage prices and its trial.
CREATE FUNCTION platform.billing_session_context(p_tenant uuid, p_user uuid, p_plan text, p_cycle text,
                                                 p_currency text) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_tenant record;
  v_role pg_catalog.text;
  v_sub record;
  v_price pg_catalog.text;
  v_metered pg_catalog.text[];
  v_trial pg_catalog.int4;
BEGIN
  SELECT t.id, t.slug, t.status, t.stripe_customer_id INTO v_tenant
    FROM platform.tenants t WHERE t.id = p_tenant AND t.deleted_at IS NULL;
  SELECT m.role INTO v_role FROM platform.tenant_members m WHERE m.tenant_id = p_tenant AND m.user_id = p_user;
  IF v_tenant.id IS NULL OR v_role IS NULL OR v_role NOT IN ('owner', 'admin') THEN
    RAISE EXCEPTION 'billing sessions are for an owner or admin of the tenant' USING ERRCODE = '42501';
  END IF;
  SELECT s.stripe_subscription_id, s.status, s.plan_code, s.billing_cycle INTO v_sub
    FROM platform.subscriptions s WHERE s.tenant_id = p_tenant;
  IF p_plan IS NOT NULL THEN
    SELECT pp.stripe_price_id, p.trial_days INTO v_price, v_trial
      FROM platform.plan_prices pp JOIN platform.plans p ON p.code = pp.plan_code
     WHERE pp.plan_code = p_plan AND pp.billing_cycle = p_cycle AND pp.currency = p_currency
       AND pp.active AND p.active AND pp.stripe_price_id IS NOT NULL;
    -- the plan's metered overage prices go on the subscription too, as tenant_subscription puts them
    v_metered := ARRAY(SELECT o.stripe_price_id FROM platform.plan_overage_prices o
                        WHERE v_price IS NOT NULL AND o.plan_code = p_plan AND o.billing_cycle = p_cycle
                          AND o.currency = p_currency AND o.active AND o.stripe_price_id IS NOT NULL
                        ORDER BY o.metric);
  END IF;
  RETURN pg_catalog.jsonb_build_object(
    'tenant_id', v_tenant.id, 'slug', v_tenant.slug, 'status', v_tenant.status,
    'customer', v_tenant.stripe_customer_id, 'role', v_role, 'price', v_price,
    'metered_prices', pg_catalog.to_jsonb(COALESCE(v_metered, '{}')), 'trial_days', v_trial,
    'subscription', CASE WHEN v_sub.stripe_subscription_id IS NOT NULL THEN pg_catalog.jsonb_build_object(
      'id', v_sub.stripe_subscription_id, 'status', v_sub.status, 'plan', v_sub.plan_code,
      'cycle', v_sub.billing_cycle) END);
END
$$;

-- Records p_customer as the tenant's Stripe customer when it has none, audited; returns the tenant's customer
-- afterwards (another one, when a concurrent request or tenant_subscription recorded it first).
CREATE FUNCTION platform.billing_link_customer(p_tenant uuid, p_customer text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_slug pg_catalog.text;
  v_now pg_catalog.text;
BEGIN
  IF p_customer IS NULL OR p_customer !~ '^cus_[A-Za-z0-9]{1,250}$' THEN
    RAISE EXCEPTION 'billing_link_customer: % is not a Stripe customer id', p_customer USING ERRCODE = '22023';
  END IF;
  UPDATE platform.tenants SET stripe_customer_id = p_customer, updated_at = pg_catalog.now()
   WHERE id = p_tenant AND stripe_customer_id IS NULL AND deleted_at IS NULL
  RETURNING slug INTO v_slug;
  IF v_slug IS NOT NULL THEN
    INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action, before, after)
    VALUES (p_tenant, 'tenant_billing_customer', v_slug, 'create', NULL,
            pg_catalog.jsonb_build_object('stripe_customer_id', p_customer, 'source', 'billing session'));
  END IF;
  SELECT t.stripe_customer_id INTO v_now FROM platform.tenants t WHERE t.id = p_tenant;
  RETURN v_now;
END
$$;

RESET ROLE;

REVOKE ALL ON FUNCTION platform.billing_session_context(uuid, uuid, text, text, text),
  platform.billing_link_customer(uuid, text) FROM PUBLIC;
GRANT SELECT (id, slug, status, stripe_customer_id, deleted_at), UPDATE (stripe_customer_id, updated_at)
  ON platform.tenants TO selfbase_billing_sessions;
GRANT SELECT (tenant_id, user_id, role) ON platform.tenant_members TO selfbase_billing_sessions;
GRANT SELECT (tenant_id, stripe_subscription_id, status, plan_code, billing_cycle) ON platform.subscriptions
  TO selfbase_billing_sessions;
GRANT SELECT (plan_code, billing_cycle, currency, stripe_price_id, active) ON platform.plan_prices
  TO selfbase_billing_sessions;
GRANT SELECT (plan_code, metric, billing_cycle, currency, stripe_price_id, active) ON platform.plan_overage_prices
  TO selfbase_billing_sessions;
GRANT SELECT (code, active, trial_days) ON platform.plans TO selfbase_billing_sessions;
-- (the tables' tenant_isolation policies call it for every role)
GRANT EXECUTE ON FUNCTION platform.current_tenant_id() TO selfbase_billing_sessions;
GRANT INSERT (tenant_id, entity, entity_key, action, before, after) ON platform.audit_log TO selfbase_billing_sessions;
ALTER FUNCTION platform.billing_session_context(uuid, uuid, text, text, text) OWNER TO selfbase_billing_sessions;
ALTER FUNCTION platform.billing_link_customer(uuid, text) OWNER TO selfbase_billing_sessions;
GRANT EXECUTE ON FUNCTION platform.billing_session_context(uuid, uuid, text, text, text),
  platform.billing_link_customer(uuid, text) TO selfbase_billing;
"""
