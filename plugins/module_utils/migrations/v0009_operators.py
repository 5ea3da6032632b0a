# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0009: the operators' API. With the admin secret a GraphQL mutation on platform.* touched no row
(hasura.user holds the admin session, so tenant_isolation matches nothing). Operators are now auth users that the
control plane lists in platform.operators; their requests use Hasura's "operator" role, which reads every
tenant's rows and acts only through the functions below, each audited with the operator's user id."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0009"
NAME = "operators"
SQL = r"""
-- selfbase platform schema, version 0009: operators and their actions.
DO $roles$
BEGIN
  -- Owns the operator functions: the only role that changes a tenant for an operator. Nobody logs in as it.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'selfbase_operator_definer') THEN
    CREATE ROLE selfbase_operator_definer NOLOGIN NOBYPASSRLS;
  END IF;
END
$roles$;
GRANT USAGE ON SCHEMA platform TO selfbase_operator_definer;

SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = pg_catalog, platform, pg_temp;

-- The auth users who may act as operators. Only the control plane writes it; a token's "operator" role is not
-- enough without a row here.
CREATE TABLE platform.operators (
  user_id    uuid PRIMARY KEY,
  note       text NOT NULL DEFAULT '' CHECK (pg_catalog.length(note) <= 200),
  created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  created_by text NOT NULL DEFAULT session_user
);
ALTER TABLE platform.operators ENABLE ROW LEVEL SECURITY;
ALTER TABLE platform.operators FORCE ROW LEVEL SECURITY;
CREATE POLICY control_plane ON platform.operators TO selfbase_admin USING (true) WITH CHECK (true);
CREATE POLICY operator_definer ON platform.operators FOR SELECT TO selfbase_operator_definer USING (true);

-- The operator a Hasura mutation acts for: its role is "operator" and its user is listed. NULL otherwise.
CREATE FUNCTION platform.current_operator_id() RETURNS uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT o.user_id FROM platform.operators o
   WHERE o.user_id = platform.current_user_id()
     AND NULLIF(pg_catalog.current_setting('hasura.user', true), '')::pg_catalog.jsonb
         OPERATOR(pg_catalog.->>) 'x-hasura-role' = 'operator'
$$;

-- Audit rows name the operator, and only the operator functions can write one that does.
ALTER TABLE platform.audit_log ADD COLUMN operator_id uuid;
CREATE OR REPLACE FUNCTION platform.stamp_audit_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.actor := session_user;
  NEW.at := pg_catalog.now();
  IF current_user OPERATOR(pg_catalog.<>) 'selfbase_operator_definer' THEN
    NEW.operator_id := NULL;
  END IF;
  RETURN NEW;
END
$$;

-- The checks every operator action starts with: an operator, and a tenant that exists (locked for the change).
CREATE FUNCTION platform.operator_tenant(p_tenant uuid) RETURNS platform.tenants
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  t platform.tenants;
BEGIN
  IF platform.current_operator_id() IS NULL THEN
    RAISE EXCEPTION 'only an operator may do this' USING ERRCODE = '42501',
      HINT = 'the request needs the operator role, for a user listed in platform.operators';
  END IF;
  SELECT * INTO t FROM platform.tenants WHERE id = p_tenant FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'tenant_id: no tenant %', p_tenant USING ERRCODE = '22023';
  END IF;
  RETURN t;
END
$$;

CREATE FUNCTION platform.operator_audit(p_tenant platform.tenants, p_entity text, p_key text, p_action text,
                                        p_old jsonb, p_new jsonb) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action, before, after, operator_id)
  VALUES (p_tenant.id, p_entity, p_key, p_action, p_old, p_new, platform.current_operator_id())
$$;

-- Set one field of a tenant (status or plan) when it differs, with its audit row; the row as it is then.
CREATE FUNCTION platform.operator_update_tenant(t platform.tenants, p_field text, p_value text)
RETURNS platform.tenants
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_old text := CASE p_field WHEN 'status' THEN t.status ELSE t.plan_code END;
  n platform.tenants;
BEGIN
  IF v_old IS NOT DISTINCT FROM p_value THEN
    RETURN t;
  END IF;
  UPDATE platform.tenants x
     SET status = CASE WHEN p_field = 'status' THEN p_value ELSE x.status END,
         plan_code = CASE WHEN p_field = 'plan' THEN p_value ELSE x.plan_code END,
         updated_at = pg_catalog.now()
   WHERE x.id = t.id RETURNING * INTO n;
  PERFORM platform.operator_audit(t, 'tenant', t.slug, 'update', pg_catalog.jsonb_build_object(p_field, v_old),
                                  pg_catalog.jsonb_build_object(p_field, p_value));
  RETURN n;
END
$$;

-- Suspend (status suspended) or resume (status active) a tenant. Deleted and canceled tenants stay as they are.
CREATE FUNCTION platform.operator_set_tenant_status(tenant_id uuid, status text) RETURNS SETOF platform.tenants
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  t platform.tenants := platform.operator_tenant(operator_set_tenant_status.tenant_id);
BEGIN
  IF operator_set_tenant_status.status IS NULL OR operator_set_tenant_status.status NOT IN ('active', 'suspended')
  THEN
    RAISE EXCEPTION 'status: must be active or suspended, got %', operator_set_tenant_status.status
      USING ERRCODE = '22023';
  END IF;
  IF t.status IN ('deleted', 'canceled') THEN
    RAISE EXCEPTION 'status: tenant % is %; the control plane restores it', t.slug, t.status USING ERRCODE = '55000';
  END IF;
  RETURN NEXT platform.operator_update_tenant(t, 'status', operator_set_tenant_status.status);
END
$$;

-- Move a tenant to another active plan (quotas and features follow the plan; Stripe's subscription is changed
-- by selfbase.platform.tenant_subscription).
CREATE FUNCTION platform.operator_change_plan(tenant_id uuid, plan_code text) RETURNS SETOF platform.tenants
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  t platform.tenants := platform.operator_tenant(operator_change_plan.tenant_id);
BEGIN
  IF NOT EXISTS (SELECT FROM platform.plans p WHERE p.code = operator_change_plan.plan_code AND p.active) THEN
    RAISE EXCEPTION 'plan_code: no active plan %', operator_change_plan.plan_code USING ERRCODE = '22023';
  END IF;
  RETURN NEXT platform.operator_update_tenant(t, 'plan', operator_change_plan.plan_code);
END
$$;

-- Set (or, with clear, remove) a tenant's override of one quota. limit_value NULL: unlimited. mode and period
-- NULL (or left out): the override's own, else the plan's (hard and month without one).
CREATE FUNCTION platform.operator_set_quota(tenant_id uuid, metric text, limit_value bigint DEFAULT NULL,
                                            mode text DEFAULT NULL, period text DEFAULT NULL,
                                            clear boolean DEFAULT false) RETURNS SETOF platform.tenants
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  t platform.tenants := platform.operator_tenant(operator_set_quota.tenant_id);
  v_old platform.tenant_quotas;
  v_new platform.tenant_quotas;
  v_plan platform.plan_quotas;
  v_key text;
BEGIN
  IF NOT EXISTS (SELECT FROM platform.metrics m WHERE m.name = operator_set_quota.metric) THEN
    RAISE EXCEPTION 'metric: no metric %', operator_set_quota.metric USING ERRCODE = '22023';
  END IF;
  IF operator_set_quota.mode NOT IN ('hard', 'soft', 'overage') THEN
    RAISE EXCEPTION 'mode: must be hard, soft or overage, got %', operator_set_quota.mode USING ERRCODE = '22023';
  END IF;
  IF operator_set_quota.limit_value < 0 THEN
    RAISE EXCEPTION 'limit_value: must be 0 or more, got %', operator_set_quota.limit_value USING ERRCODE = '22023';
  END IF;
  IF operator_set_quota.period IS NOT NULL AND operator_set_quota.period NOT IN ('hour', 'day', 'month', 'none') THEN
    RAISE EXCEPTION 'period: must be hour, day, month or none, got %', operator_set_quota.period
      USING ERRCODE = '22023';
  END IF;
  v_key := t.slug || '/' || operator_set_quota.metric;
  SELECT * INTO v_old FROM platform.tenant_quotas q
   WHERE q.tenant_id = t.id AND q.metric = operator_set_quota.metric FOR UPDATE;
  IF COALESCE(operator_set_quota.clear, false) THEN
    IF v_old.tenant_id IS NOT NULL THEN
      DELETE FROM platform.tenant_quotas q WHERE q.tenant_id = t.id AND q.metric = operator_set_quota.metric;
      PERFORM platform.operator_audit(t, 'tenant_quota', v_key, 'delete', pg_catalog.to_jsonb(v_old), NULL);
    END IF;
    RETURN NEXT t;
    RETURN;
  END IF;
  -- the period the tenant's plan measures this metric over, unless one is given
  SELECT * INTO v_plan FROM platform.plan_quotas pq
   WHERE pq.plan_code = t.plan_code AND pq.metric = operator_set_quota.metric;
  v_new := ROW(t.id, operator_set_quota.metric, operator_set_quota.limit_value,
             COALESCE(operator_set_quota.period, v_old.period, v_plan.period, 'month'),
             COALESCE(operator_set_quota.mode, v_old.mode, v_plan.mode, 'hard'),
             COALESCE(v_old.overage_unit_price, v_plan.overage_unit_price));
  IF v_old.tenant_id IS NULL THEN
    INSERT INTO platform.tenant_quotas SELECT v_new.*;
    PERFORM platform.operator_audit(t, 'tenant_quota', v_key, 'create', NULL, pg_catalog.to_jsonb(v_new));
  ELSIF v_old IS DISTINCT FROM v_new THEN
    UPDATE platform.tenant_quotas q SET limit_value = v_new.limit_value, period = v_new.period, mode = v_new.mode
     WHERE q.tenant_id = t.id AND q.metric = operator_set_quota.metric;
    PERFORM platform.operator_audit(t, 'tenant_quota', v_key, 'update', pg_catalog.to_jsonb(v_old),
                                    pg_catalog.to_jsonb(v_new));
  END IF;
  RETURN NEXT t;
END
$$;

-- The rows operators read through Hasura's select permissions: in a query (no hasura.user) as every GraphQL
-- read; the permissions of the "operator" role are the wall, as the tenant filter is for users.
DO $graphql$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['tenant_quotas', 'usage_rollups_daily', 'subscriptions', 'invoices'] LOOP
    EXECUTE pg_catalog.format('CREATE POLICY graphql_read ON platform.%I FOR SELECT TO selfbase_graphql '
                              'USING (NULLIF(pg_catalog.current_setting(''hasura.user'', true), '''') IS NULL)', t);
  END LOOP;
END
$graphql$;

-- What the definer changes, and nothing else.
CREATE POLICY operator_definer ON platform.tenants FOR SELECT TO selfbase_operator_definer USING (true);
CREATE POLICY operator_definer_update ON platform.tenants FOR UPDATE TO selfbase_operator_definer
  USING (true) WITH CHECK (true);
CREATE POLICY operator_definer ON platform.tenant_quotas TO selfbase_operator_definer USING (true) WITH CHECK (true);
CREATE POLICY operator_definer ON platform.audit_log FOR INSERT TO selfbase_operator_definer WITH CHECK (true);

RESET ROLE;

-- selfbase.platform.platform_operator serialises its runs on this row.
INSERT INTO platform.control_locks (name) VALUES ('platform_operator');

REVOKE ALL ON platform.operators FROM PUBLIC;
REVOKE ALL ON FUNCTION platform.current_operator_id(), platform.operator_tenant(uuid),
  platform.operator_audit(platform.tenants, text, text, text, jsonb, jsonb),
  platform.operator_update_tenant(platform.tenants, text, text),
  platform.operator_set_tenant_status(uuid, text), platform.operator_change_plan(uuid, text),
  platform.operator_set_quota(uuid, text, bigint, text, text, boolean) FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE (note), DELETE ON platform.operators TO selfbase_admin;
GRANT SELECT (user_id) ON platform.operators TO selfbase_operator_definer;
GRANT UPDATE (status, plan_code, updated_at) ON platform.tenants TO selfbase_operator_definer;
GRANT SELECT ON platform.tenants, platform.plans, platform.metrics, platform.plan_quotas TO selfbase_operator_definer;
GRANT SELECT, INSERT, UPDATE (limit_value, period, mode), DELETE ON platform.tenant_quotas
  TO selfbase_operator_definer;
GRANT INSERT ON platform.audit_log TO selfbase_operator_definer;
GRANT EXECUTE ON FUNCTION platform.current_user_id(), platform.current_operator_id() TO selfbase_operator_definer;
ALTER FUNCTION platform.current_operator_id() OWNER TO selfbase_operator_definer;
ALTER FUNCTION platform.operator_tenant(uuid) OWNER TO selfbase_operator_definer;
ALTER FUNCTION platform.operator_audit(platform.tenants, text, text, text, jsonb, jsonb)
  OWNER TO selfbase_operator_definer;
ALTER FUNCTION platform.operator_update_tenant(platform.tenants, text, text) OWNER TO selfbase_operator_definer;
ALTER FUNCTION platform.operator_set_tenant_status(uuid, text) OWNER TO selfbase_operator_definer;
ALTER FUNCTION platform.operator_change_plan(uuid, text) OWNER TO selfbase_operator_definer;
ALTER FUNCTION platform.operator_set_quota(uuid, text, bigint, text, text, boolean) OWNER TO selfbase_operator_definer;
-- Hasura's login calls the actions (it runs them as mutations, where hasura.user is set) and reads for the
-- operator role.
GRANT EXECUTE ON FUNCTION platform.current_operator_id(), platform.operator_set_tenant_status(uuid, text),
  platform.operator_change_plan(uuid, text), platform.operator_set_quota(uuid, text, bigint, text, text, boolean)
  TO selfbase_graphql;
-- Stripe ids and payment links stay out of Hasura's reach, as before.
GRANT SELECT (tenant_id, plan_code, billing_cycle, status, current_period_end,
              cancel_at_period_end, updated_at) ON platform.subscriptions TO selfbase_graphql;
GRANT SELECT (stripe_invoice_id, tenant_id, number, status, currency, amount_due, amount_paid, amount_remaining, total,
              period_start, period_end, due_date, created) ON platform.invoices TO selfbase_graphql;
"""
