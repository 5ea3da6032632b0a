# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0013: the history that MRR movements need, and discounts in the subscription mirror.

platform.subscriptions holds a tenant's subscription as it is now, so a month's MRR could only be told from its
start and cancel dates: a plan change, a quantity or a discount was invisible. Every change of what a subscription
is worth now adds a row to platform.subscription_versions (recorded by a trigger, which no login can bypass or
forge), and platform.mrr_at(t) gives each tenant's MRR at any moment, after discounts.

The mirror gains the subscription's discount (its coupon's percent or amount off, duration and end), written by
selfbase.platform.tenant_subscription and by the webhook receiver, which now asks Stripe for the subscription with
its discounts expanded. stripe_event_apply is replaced by the 0007 function with that one assignment added."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.selfbase.platform.plugins.module_utils.migrations import v0007_security_round3 as _v0007

VERSION = "0013"
NAME = "mrr_history"

# The mirror's discount from the subscription Stripe returns with discounts.source.coupon expanded: the first
# discount; its amount off in the subscription's currency (the coupon's own, or one of its currency options).
_DISCOUNT = """\
               discount = (SELECT pg_catalog.jsonb_build_object(
                                    'coupon', COALESCE(d #>> '{source,coupon,id}', d #>> '{source,coupon}'),
                                    'promotion_code', d -> 'promotion_code',
                                    'percent_off', d #> '{source,coupon,percent_off}',
                                    'amount_off', COALESCE(
                                      CASE WHEN d #>> '{source,coupon,currency}' = p_object ->> 'currency'
                                           THEN d #> '{source,coupon,amount_off}' END,
                                      d #> ARRAY['source', 'coupon', 'currency_options', p_object ->> 'currency',
                                                 'amount_off']),
                                    'duration', d #> '{source,coupon,duration}',
                                    'end', d -> 'end')
                             FROM pg_catalog.jsonb_array_elements(
                                    CASE WHEN pg_catalog.jsonb_typeof(p_object -> 'discounts') = 'array'
                                         THEN p_object -> 'discounts' ELSE '[]' END) d
                            WHERE pg_catalog.jsonb_typeof(d) = 'object' LIMIT 1),
"""
_ANCHOR = "               started_at = pg_catalog.to_timestamp((p_object ->> 'start_date')::pg_catalog.float8),\n"


def _event_apply():
    sql = _v0007.SQL
    start = sql.index('CREATE FUNCTION platform.stripe_event_apply(p_id text, p_object jsonb)')
    body = sql[start:sql.index('\n$$;\n', start) + 5]
    if body.count(_ANCHOR) != 1:
        raise ValueError('migration 0013: the anchor in 0007 stripe_event_apply moved')
    return body.replace('CREATE FUNCTION', 'CREATE OR REPLACE FUNCTION', 1).replace(_ANCHOR, _ANCHOR + _DISCOUNT)


SQL = r"""
-- selfbase platform schema, version 0013: subscription versions for MRR movements, discounts in the mirror.
DO $roles$
BEGIN
  -- Owns record_subscription_version(), the only writer of the versions. Nobody logs in as it.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'selfbase_mrr_definer') THEN
    CREATE ROLE selfbase_mrr_definer NOLOGIN NOBYPASSRLS;
  END IF;
END
$roles$;
GRANT USAGE ON SCHEMA platform TO selfbase_mrr_definer;
SET LOCAL ROLE selfbase_owner;

ALTER TABLE platform.subscriptions ADD COLUMN discount jsonb
  CHECK (discount IS NULL OR pg_catalog.jsonb_typeof(discount) = 'object');

-- What a tenant's subscription was worth from valid_from on: the plan price a month times the quantity, before
-- discounts, in minor units; with what decides whether it counts (status, start, trial end, cancellation) and the
-- discount. Written only by record_subscription_version().
CREATE TABLE platform.subscription_versions (
  id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id      uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  valid_from     timestamptz NOT NULL,
  status         text NOT NULL,
  currency       text,
  billing_cycle  text,
  monthly_amount numeric CHECK (monthly_amount >= 0),
  started_at     timestamptz,
  trial_end      timestamptz,
  canceled_at    timestamptz,
  discount       jsonb
);
CREATE INDEX subscription_versions_tenant_idx ON platform.subscription_versions (tenant_id, valid_from);
ALTER TABLE platform.subscription_versions ENABLE ROW LEVEL SECURITY;
ALTER TABLE platform.subscription_versions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON platform.subscription_versions
  USING (tenant_id = platform.current_tenant_id()) WITH CHECK (tenant_id = platform.current_tenant_id());
CREATE POLICY control_plane ON platform.subscription_versions FOR SELECT TO selfbase_admin USING (true);
CREATE POLICY monitoring ON platform.subscription_versions FOR SELECT TO selfbase_monitor USING (true);
CREATE POLICY recorder ON platform.subscription_versions TO selfbase_mrr_definer USING (true) WITH CHECK (true);

-- The plan price a month of a subscription's licensed price, times its quantity (the mirror's items), or NULL
-- for a price the price book does not know.
CREATE FUNCTION platform.subscription_monthly(p_price text, p_items jsonb)
RETURNS TABLE (currency text, billing_cycle text, monthly numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT p.currency, p.billing_cycle,
         p.unit_amount::pg_catalog.numeric
           * COALESCE((SELECT (i ->> 'quantity')::pg_catalog.numeric
                         FROM pg_catalog.jsonb_array_elements(
                                CASE WHEN pg_catalog.jsonb_typeof(p_items) = 'array' THEN p_items ELSE '[]' END) i
                        WHERE i ->> 'price' = p_price AND pg_catalog.jsonb_typeof(i -> 'quantity') = 'number'
                        LIMIT 1), 1)
           / CASE p.billing_cycle WHEN 'year' THEN 12 ELSE 1 END
    FROM platform.plan_prices p WHERE p.stripe_price_id = p_price
$$;

-- A new version whenever what the subscription is worth, or whether it counts, differs from the tenant's last
-- version (also when only the price book learnt its price). A tenant's first version stands for all its past (its
-- start and cancel dates still decide when it counts): a receiver set up after the subscription started still
-- tells that month's MRR.
CREATE FUNCTION platform.record_subscription_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_new record;
  v_last record;
BEGIN
  SELECT * INTO v_new FROM platform.subscription_monthly(NEW.stripe_price_id, NEW.items);
  SELECT v.status, v.started_at, v.trial_end, v.canceled_at, v.discount, v.currency, v.billing_cycle,
         v.monthly_amount
    INTO v_last FROM platform.subscription_versions v
   WHERE v.tenant_id = NEW.tenant_id ORDER BY v.valid_from DESC, v.id DESC LIMIT 1;
  IF FOUND AND (v_last.status, v_last.started_at, v_last.trial_end, v_last.canceled_at, v_last.discount,
                v_last.currency, v_last.billing_cycle, v_last.monthly_amount)
     IS NOT DISTINCT FROM (NEW.status, NEW.started_at, NEW.trial_end, NEW.canceled_at, NEW.discount,
                           v_new.currency, v_new.billing_cycle, v_new.monthly) THEN
    RETURN NULL;
  END IF;
  INSERT INTO platform.subscription_versions (tenant_id, valid_from, status, currency, billing_cycle,
                                              monthly_amount, started_at, trial_end, canceled_at, discount)
  VALUES (NEW.tenant_id, CASE WHEN FOUND THEN pg_catalog.now() ELSE '-infinity' END, NEW.status, v_new.currency,
          v_new.billing_cycle, v_new.monthly, NEW.started_at, NEW.trial_end, NEW.canceled_at, NEW.discount);
  RETURN NULL;
END
$$;
CREATE TRIGGER record_version AFTER INSERT OR UPDATE ON platform.subscriptions
  FOR EACH ROW EXECUTE FUNCTION platform.record_subscription_version();

-- Subscriptions mirrored before this migration: their state now stands for all their past.
INSERT INTO platform.subscription_versions (tenant_id, valid_from, status, currency, billing_cycle, monthly_amount,
                                            started_at, trial_end, canceled_at, discount)
SELECT s.tenant_id, '-infinity', s.status, m.currency, m.billing_cycle, m.monthly, s.started_at, s.trial_end,
       s.canceled_at, s.discount
  FROM platform.subscriptions s LEFT JOIN LATERAL platform.subscription_monthly(s.stripe_price_id, s.items) m ON true;

-- Each tenant's MRR at a moment, per currency, in minor units: its subscription's version in force then, counted
-- from its start (after any trial) until it is canceled, never while incomplete; less a recurring discount
-- (a 'once' discount is not recurring revenue; an amount off a yearly price is spread over 12 months).
CREATE FUNCTION platform.mrr_at(p_at timestamptz)
RETURNS TABLE (tenant_id uuid, currency text, mrr numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT v.tenant_id, v.currency,
         GREATEST(v.monthly_amount - CASE
           WHEN v.discount IS NULL OR v.discount ->> 'duration' = 'once'
                OR pg_catalog.to_timestamp((v.discount ->> 'end')::pg_catalog.float8) <= p_at THEN 0
           WHEN v.discount ->> 'percent_off' IS NOT NULL
             THEN v.monthly_amount * (v.discount ->> 'percent_off')::pg_catalog.numeric / 100
           ELSE COALESCE((v.discount ->> 'amount_off')::pg_catalog.numeric, 0)
                / CASE v.billing_cycle WHEN 'year' THEN 12 ELSE 1 END
         END, 0)
    FROM (SELECT DISTINCT ON (x.tenant_id) x.* FROM platform.subscription_versions x
           WHERE x.valid_from <= p_at ORDER BY x.tenant_id, x.valid_from DESC, x.id DESC) v
   WHERE v.monthly_amount IS NOT NULL AND v.status NOT IN ('incomplete', 'incomplete_expired')
     AND v.started_at IS NOT NULL AND GREATEST(v.started_at, COALESCE(v.trial_end, v.started_at)) <= p_at
     AND (v.canceled_at IS NULL OR v.canceled_at > p_at)
$$;

-- When each tenant first had MRR (new, or reactivated, in a month's movements).
CREATE FUNCTION platform.mrr_first_paying()
RETURNS TABLE (tenant_id uuid, since timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT v.tenant_id, pg_catalog.min(GREATEST(v.valid_from, v.started_at, COALESCE(v.trial_end, v.started_at)))
    FROM platform.subscription_versions v
   WHERE v.monthly_amount > 0 AND v.status NOT IN ('incomplete', 'incomplete_expired') AND v.started_at IS NOT NULL
     AND (v.canceled_at IS NULL
          OR v.canceled_at > GREATEST(v.valid_from, v.started_at, COALESCE(v.trial_end, v.started_at)))
   GROUP BY v.tenant_id
$$;
RESET ROLE;

""" + _event_apply() + r"""
-- Grants: versions are read by the control plane and monitoring, and written by the trigger only.
REVOKE ALL ON platform.subscription_versions FROM PUBLIC;
REVOKE ALL ON FUNCTION platform.subscription_monthly(text, jsonb), platform.record_subscription_version(),
  platform.mrr_at(timestamptz), platform.mrr_first_paying() FROM PUBLIC;
GRANT SELECT ON platform.subscription_versions TO selfbase_admin, selfbase_monitor;
GRANT SELECT, INSERT ON platform.subscription_versions TO selfbase_mrr_definer;
GRANT SELECT (stripe_price_id, currency, billing_cycle, unit_amount) ON platform.plan_prices TO selfbase_mrr_definer;
GRANT EXECUTE ON FUNCTION platform.subscription_monthly(text, jsonb) TO selfbase_mrr_definer;
ALTER FUNCTION platform.record_subscription_version() OWNER TO selfbase_mrr_definer;
GRANT EXECUTE ON FUNCTION platform.mrr_at(timestamptz), platform.mrr_first_paying() TO selfbase_admin,
  selfbase_monitor;
GRANT SELECT (discount) ON platform.subscriptions TO selfbase_monitor;
"""
