# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0003: security hardening after an adversarial review (pinned search paths, no TEMP for
PUBLIC, row locks instead of advisory keys, quantity and period checks on usage, append-only audit log,
narrow monitoring and GraphQL grants)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0003"
NAME = "hardening"
SQL = r"""
-- selfbase platform schema, version 0003: hardening.

-- No temporary objects for PUBLIC: a pg_temp type or relation must never be
-- able to shadow what a privileged function resolves. The control plane keeps
-- TEMP (the tenant modules stage rows in temporary tables).
DO $temp$
BEGIN
  EXECUTE pg_catalog.format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', pg_catalog.current_database());
  EXECUTE pg_catalog.format('GRANT TEMPORARY ON DATABASE %I TO selfbase_admin', pg_catalog.current_database());
  -- The GraphQL role: what Hasura's login is a member of (and nothing of selfbase_app).
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'selfbase_graphql') THEN
    CREATE ROLE selfbase_graphql NOLOGIN NOBYPASSRLS;
  END IF;
END
$temp$;
GRANT USAGE ON SCHEMA platform TO selfbase_graphql;

SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = pg_catalog, platform, pg_temp;

-- Usage metrics whose events carry deltas (storage) may be negative; all others count up.
ALTER TABLE platform.metrics ADD COLUMN delta boolean NOT NULL DEFAULT false;
UPDATE platform.metrics SET delta = true WHERE name = 'storage_bytes';

-- Quota locks: one row per tenant and metric, updated by whoever checks a
-- limit, so that concurrent checks conflict under every isolation level (a
-- REPEATABLE READ loser gets a serialization failure). Row-level security
-- keeps each tenant to its own rows: nobody can lock another tenant's.
CREATE TABLE platform.quota_locks (
  tenant_id uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  metric    text NOT NULL REFERENCES platform.metrics (name) ON UPDATE CASCADE ON DELETE CASCADE,
  version   bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant_id, metric)
);
ALTER TABLE platform.quota_locks ENABLE ROW LEVEL SECURITY;
ALTER TABLE platform.quota_locks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON platform.quota_locks
  USING (tenant_id = platform.current_tenant_id()) WITH CHECK (tenant_id = platform.current_tenant_id());
CREATE POLICY control_plane ON platform.quota_locks TO selfbase_admin USING (true) WITH CHECK (true);

-- Control-plane locks: the modules serialise on these rows; only the control plane can lock them.
CREATE TABLE platform.control_locks (
  name text PRIMARY KEY
);
INSERT INTO platform.control_locks (name) VALUES ('tenants'), ('tenant_quota'), ('billing_plan');

-- Take the quota lock of a tenant and metric until the transaction ends.
CREATE FUNCTION platform.lock_quota(p_tenant uuid, p_metric text) RETURNS void
LANGUAGE sql VOLATILE AS $$
  INSERT INTO platform.quota_locks AS l (tenant_id, metric) VALUES (p_tenant, p_metric)
  ON CONFLICT (tenant_id, metric) DO UPDATE SET version = l.version + 1
$$;

-- May this session read or spend the quota of p_tenant? Its own tenant, or the
-- control plane and monitoring: never a tenant merely visible through a
-- read policy (Hasura's reads outside mutations see every tracked row).
CREATE FUNCTION platform.may_act_for(p_tenant uuid) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT COALESCE(p_tenant = platform.current_tenant_id(), false)
      OR pg_catalog.pg_has_role('selfbase_admin', 'USAGE')
      OR pg_catalog.pg_has_role('selfbase_monitor', 'USAGE')
$$;

-- The end of the period that starts at period_start(p_period, p_at).
CREATE FUNCTION platform.period_end(p_period text, p_at timestamptz DEFAULT now()) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE p_period WHEN 'none' THEN 'infinity'::timestamptz
         ELSE platform.period_start(p_period, p_at) + ('1 ' || p_period)::interval END
$$;

-- Usage of a metric in the period that contains p_at (bounded on both sides,
-- so that an event in the next period never counts in this one).
CREATE FUNCTION platform.metric_usage_at(p_tenant uuid, p_metric text, p_period text, p_at timestamptz)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
  v_source text;
  v_used bigint;
  v_from timestamptz := platform.period_start(p_period, p_at);
  v_to timestamptz := platform.period_end(p_period, p_at);
BEGIN
  SELECT source INTO v_source FROM platform.metrics WHERE name = p_metric;
  IF v_source = 'members' THEN
    SELECT count(*) INTO v_used FROM platform.tenant_members WHERE tenant_id = p_tenant;
  ELSIF v_source = 'projects' THEN
    SELECT count(*) INTO v_used FROM platform.projects WHERE tenant_id = p_tenant;
  ELSIF p_period = 'hour' THEN
    SELECT COALESCE(sum(quantity), 0) INTO v_used FROM platform.usage_events
     WHERE tenant_id = p_tenant AND metric = p_metric AND occurred_at >= v_from AND occurred_at < v_to;
  ELSIF p_period = 'none' THEN
    SELECT COALESCE(sum(quantity), 0) INTO v_used FROM platform.usage_rollups_daily
     WHERE tenant_id = p_tenant AND metric = p_metric;
  ELSE
    SELECT COALESCE(sum(quantity), 0) INTO v_used FROM platform.usage_rollups_daily
     WHERE tenant_id = p_tenant AND metric = p_metric
       AND day >= (v_from AT TIME ZONE 'UTC')::date AND day < (v_to AT TIME ZONE 'UTC')::date;
  END IF;
  RETURN COALESCE(v_used, 0);
END
$$;

CREATE OR REPLACE FUNCTION platform.metric_usage(p_tenant uuid, p_metric text, p_period text) RETURNS bigint
LANGUAGE sql STABLE AS $$
  SELECT platform.metric_usage_at(p_tenant, p_metric, p_period, now())
$$;

-- check_quota for the period that contains p_at.
CREATE FUNCTION platform.check_quota_at(p_tenant uuid, p_metric text, p_requested bigint, p_at timestamptz)
RETURNS TABLE (allowed boolean, used bigint, limit_value bigint, remaining bigint,
               percent numeric, status text, mode text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  q record;
  v_used bigint;
BEGIN
  -- Fail closed: only the session's own tenant (or the control plane's, monitoring's).
  IF NOT platform.may_act_for(p_tenant) OR NOT EXISTS (SELECT FROM platform.tenants t WHERE t.id = p_tenant) THEN
    RAISE EXCEPTION 'check_quota: tenant % does not exist or is not visible to this session', p_tenant
      USING ERRCODE = '42501';
  END IF;
  SELECT * INTO q FROM platform.effective_quotas(p_tenant) e WHERE e.metric = p_metric;
  IF NOT FOUND THEN  -- no quota: unlimited
    RETURN QUERY SELECT true, platform.metric_usage_at(p_tenant, p_metric, 'month', p_at), NULL::bigint,
                        NULL::bigint, NULL::numeric, 'ok'::text, NULL::text;
    RETURN;
  END IF;
  v_used := platform.metric_usage_at(p_tenant, p_metric, q.period, p_at);
  RETURN QUERY SELECT
    q.limit_value IS NULL OR q.mode <> 'hard' OR v_used + p_requested <= q.limit_value,
    v_used,
    q.limit_value,
    CASE WHEN q.limit_value IS NULL THEN NULL ELSE greatest(q.limit_value - v_used, 0) END,
    CASE WHEN q.limit_value IS NULL THEN NULL WHEN q.limit_value = 0 THEN 100.0
         ELSE round(v_used * 100.0 / q.limit_value, 2) END,
    platform.quota_state(v_used + p_requested, q.limit_value),
    q.mode;
END
$$;

CREATE OR REPLACE FUNCTION platform.check_quota(p_tenant uuid, p_metric text, p_requested bigint DEFAULT 1)
RETURNS TABLE (allowed boolean, used bigint, limit_value bigint, remaining bigint,
               percent numeric, status text, mode text)
LANGUAGE sql STABLE AS $$
  SELECT * FROM platform.check_quota_at(p_tenant, p_metric, p_requested, now())
$$;

CREATE OR REPLACE FUNCTION platform.quota_status(p_tenant uuid)
RETURNS TABLE (metric text, used bigint, limit_value bigint, percent numeric, status text, mode text, period text)
LANGUAGE sql STABLE AS $$
  SELECT e.metric, u.used, e.limit_value,
         CASE WHEN e.limit_value IS NULL THEN NULL WHEN e.limit_value = 0 THEN 100.0
              ELSE round(u.used * 100.0 / e.limit_value, 2) END,
         platform.quota_state(u.used, e.limit_value), e.mode, e.period
    FROM platform.effective_quotas(p_tenant) e
   CROSS JOIN LATERAL (SELECT platform.metric_usage(p_tenant, e.metric, e.period) AS used) u
   WHERE platform.may_act_for(p_tenant)
   ORDER BY e.metric
$$;

-- Hard count limits: a deleted tenant gets no new rows; the quota lock row
-- serialises inserts of one tenant and metric under every isolation level.
CREATE OR REPLACE FUNCTION platform.enforce_count_quota() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v_metric text := TG_ARGV[0];
  v_status text;
  c record;
BEGIN
  SELECT t.status INTO v_status FROM platform.tenants t WHERE t.id = NEW.tenant_id;
  IF NOT FOUND THEN  -- another tenant's row: row-level security refuses it after this trigger
    RETURN NEW;
  END IF;
  IF v_status = 'deleted' THEN
    RAISE EXCEPTION 'tenant % is deleted: no new % can be added', NEW.tenant_id, v_metric
      USING ERRCODE = '55000';
  END IF;
  PERFORM platform.lock_quota(NEW.tenant_id, v_metric);
  SELECT * INTO c FROM platform.check_quota(NEW.tenant_id, v_metric, 1);
  IF NOT c.allowed THEN
    RAISE EXCEPTION 'quota exceeded: tenant % already has % of % % allowed (hard limit)',
                    NEW.tenant_id, c.used, c.limit_value, v_metric
      USING ERRCODE = 'SB001', HINT = 'Raise the quota or remove existing rows first.';
  END IF;
  RETURN NEW;
END
$$;

-- Definer functions: search_path pinned with pg_temp last, types qualified.
CREATE OR REPLACE FUNCTION platform.rollup_usage_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
BEGIN
  INSERT INTO platform.usage_rollups_daily AS r (tenant_id, metric, day, quantity, events)
  VALUES (NEW.tenant_id, NEW.metric, (NEW.occurred_at AT TIME ZONE 'UTC')::pg_catalog.date, NEW.quantity, 1)
  ON CONFLICT (tenant_id, metric, day)
  DO UPDATE SET quantity = r.quantity + EXCLUDED.quantity, events = r.events + 1;
  RETURN NULL;
END
$$;

-- Record usage once per idempotency key, checked against the period the event
-- lands in. Refused: unknown metrics, quantities below 1 (non-zero for delta
-- metrics), events before the current period or more than 5 minutes ahead,
-- deleted tenants, and a key reused for another payload (SB002).
CREATE OR REPLACE FUNCTION platform.record_usage(p_tenant uuid, p_metric text, p_quantity bigint,
                                                 p_idempotency_key text, p_occurred_at timestamptz DEFAULT now())
RETURNS TABLE (recorded boolean, usage_event_id bigint, status text, overage bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_delta pg_catalog.bool;
  v_status pg_catalog.text;
  v_period pg_catalog.text;
  v_prev record;
  c record;
  q record;
  v_id pg_catalog.int8;
  v_over pg_catalog.int8 := 0;
BEGIN
  SELECT m.delta INTO v_delta FROM platform.metrics m WHERE m.name = p_metric AND m.source = 'events';
  IF NOT FOUND THEN
    RAISE EXCEPTION 'record_usage: unknown usage metric "%"', p_metric USING ERRCODE = '22023';
  END IF;
  IF p_quantity IS NULL OR (v_delta AND p_quantity = 0) OR (NOT v_delta AND p_quantity < 1) THEN
    RAISE EXCEPTION 'record_usage: p_quantity must be %, got %',
                    CASE WHEN v_delta THEN 'a non-zero delta' ELSE 'at least 1' END, p_quantity
      USING ERRCODE = '22023';
  END IF;
  IF p_occurred_at IS NULL OR p_occurred_at > pg_catalog.now() + '5 minutes'::pg_catalog.interval THEN
    RAISE EXCEPTION 'record_usage: p_occurred_at % is more than 5 minutes ahead of the database clock (%)',
                    p_occurred_at, pg_catalog.now() USING ERRCODE = '22023';
  END IF;
  -- row-level security (forced on the owner) shows only the session's tenant
  SELECT t.status INTO v_status FROM platform.tenants t WHERE t.id = p_tenant;
  IF NOT FOUND OR p_tenant IS DISTINCT FROM platform.current_tenant_id() THEN
    RAISE EXCEPTION 'record_usage: tenant % does not exist or is not visible to this session', p_tenant
      USING ERRCODE = '42501';
  END IF;
  IF v_status = 'deleted' THEN
    RAISE EXCEPTION 'record_usage: tenant % is deleted', p_tenant USING ERRCODE = '55000';
  END IF;
  SELECT * INTO q FROM platform.effective_quotas(p_tenant) e WHERE e.metric = p_metric;
  v_period := CASE WHEN q.period IS NULL OR q.period = 'none' THEN 'month' ELSE q.period END;
  IF p_occurred_at < platform.period_start(v_period, pg_catalog.now()) THEN
    RAISE EXCEPTION 'record_usage: p_occurred_at % is before the current % (from %): late usage is refused',
                    p_occurred_at, v_period, platform.period_start(v_period, pg_catalog.now())
      USING ERRCODE = '22023';
  END IF;
  PERFORM platform.lock_quota(p_tenant, p_metric);
  SELECT e.id, e.metric, e.quantity INTO v_prev FROM platform.usage_events e
   WHERE e.tenant_id = p_tenant AND e.idempotency_key = p_idempotency_key;
  IF FOUND THEN
    IF v_prev.metric <> p_metric OR v_prev.quantity <> p_quantity THEN
      RAISE EXCEPTION 'record_usage: idempotency key "%" was already used for % % of %; a key names one event',
                      p_idempotency_key, v_prev.quantity, v_prev.metric, p_tenant USING ERRCODE = 'SB002';
    END IF;
    RETURN QUERY SELECT false, v_prev.id, 'duplicate'::pg_catalog.text, 0::pg_catalog.int8;
    RETURN;
  END IF;
  SELECT * INTO c FROM platform.check_quota_at(p_tenant, p_metric, p_quantity, p_occurred_at);
  IF NOT c.allowed THEN
    RAISE EXCEPTION 'quota exceeded: tenant % has used % of % % this period; % more refused (hard limit)',
                    p_tenant, c.used, c.limit_value, p_metric, p_quantity
      USING ERRCODE = 'SB001';
  END IF;
  INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key, occurred_at)
  VALUES (p_tenant, p_metric, p_quantity, p_idempotency_key, p_occurred_at)
  ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
  RETURNING id INTO v_id;
  IF v_id IS NULL THEN  -- the same key, concurrently, on another metric: let the caller retry
    RAISE EXCEPTION 'record_usage: idempotency key "%" was recorded concurrently; retry', p_idempotency_key
      USING ERRCODE = '40001';
  END IF;
  IF c.mode = 'overage' AND c.limit_value IS NOT NULL AND p_quantity > 0
     AND c.used + p_quantity > c.limit_value THEN
    v_over := least(p_quantity, c.used + p_quantity - c.limit_value);
    INSERT INTO platform.usage_overages (tenant_id, metric, usage_event_id, quantity, unit_price)
    VALUES (p_tenant, p_metric, v_id, v_over, q.overage_unit_price);
  END IF;
  RETURN QUERY SELECT true, v_id, platform.quota_state(c.used + p_quantity, c.limit_value), v_over;
END
$$;

-- The audit log is append-only for every non-owner role; the database names the actor.
CREATE FUNCTION platform.stamp_audit_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.actor := session_user;
  NEW.at := pg_catalog.now();
  RETURN NEW;
END
$$;
CREATE TRIGGER stamp_audit_row BEFORE INSERT ON platform.audit_log
  FOR EACH ROW EXECUTE FUNCTION platform.stamp_audit_row();
REVOKE UPDATE, DELETE, TRUNCATE ON platform.audit_log FROM selfbase_admin;

-- An invitation's token hash is unique within its tenant: a global unique
-- index told a tenant whether another one held a hash.
ALTER TABLE platform.tenant_invitations DROP CONSTRAINT tenant_invitations_token_hash_key;
ALTER TABLE platform.tenant_invitations ADD CONSTRAINT tenant_invitations_tenant_token_key UNIQUE (tenant_id, token_hash);

-- Grants ---------------------------------------------------------------------
REVOKE ALL ON platform.quota_locks, platform.control_locks FROM PUBLIC;
REVOKE ALL ON FUNCTION platform.lock_quota(uuid, text), platform.may_act_for(uuid), platform.period_end(text, timestamptz),
  platform.metric_usage_at(uuid, text, text, timestamptz), platform.check_quota_at(uuid, text, bigint, timestamptz),
  platform.stamp_audit_row() FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON platform.quota_locks TO selfbase_app, selfbase_admin, selfbase_graphql;
GRANT SELECT, UPDATE ON platform.control_locks TO selfbase_admin;
GRANT EXECUTE ON FUNCTION platform.lock_quota(uuid, text), platform.may_act_for(uuid),
  platform.period_end(text, timestamptz), platform.metric_usage_at(uuid, text, text, timestamptz),
  platform.check_quota_at(uuid, text, bigint, timestamptz) TO selfbase_app, selfbase_admin, selfbase_graphql;
GRANT EXECUTE ON FUNCTION platform.may_act_for(uuid), platform.period_end(text, timestamptz),
  platform.metric_usage_at(uuid, text, text, timestamptz) TO selfbase_monitor;

-- Monitoring: usage of every tenant, nothing else (no Stripe ids, settings, people or event keys).
REVOKE SELECT ON platform.tenants, platform.tenant_members, platform.projects, platform.usage_events
  FROM selfbase_monitor;
GRANT SELECT (id, slug, status, plan_code) ON platform.tenants TO selfbase_monitor;
GRANT SELECT (tenant_id) ON platform.tenant_members, platform.projects TO selfbase_monitor;
GRANT SELECT (tenant_id, metric, quantity, occurred_at) ON platform.usage_events TO selfbase_monitor;

-- GraphQL (Hasura's login): the columns the default tracked tables expose, the
-- writes their permissions allow, and what the quota triggers read. Reads
-- outside mutations see every row of these tables (graphql_read): Hasura's
-- tenant filter is the isolation there; in mutations hasura.user is set and
-- tenant_isolation walls the rows.
GRANT SELECT (id, slug, name, status, plan_code, billing_cycle, trial_ends_at, branding, features, created_at)
  ON platform.tenants TO selfbase_graphql;
GRANT SELECT (id, tenant_id, domain, verified, is_primary, created_at) ON platform.tenant_domains TO selfbase_graphql;
GRANT SELECT (id, tenant_id, user_id, role, created_at) ON platform.tenant_members TO selfbase_graphql;
GRANT SELECT (id, tenant_id, name, created_at), INSERT (tenant_id, name), UPDATE (name), DELETE
  ON platform.projects TO selfbase_graphql;
GRANT SELECT ON platform.metrics, platform.plan_quotas, platform.tenant_quotas, platform.usage_rollups_daily
  TO selfbase_graphql;
GRANT SELECT (tenant_id, metric, quantity, occurred_at) ON platform.usage_events TO selfbase_graphql;
GRANT EXECUTE ON FUNCTION platform.current_tenant_id(), platform.effective_quotas(uuid),
  platform.period_start(text, timestamptz), platform.metric_usage(uuid, text, text),
  platform.quota_state(bigint, bigint), platform.check_quota(uuid, text, bigint),
  platform.quota_status(uuid) TO selfbase_graphql;
DO $graphql$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['tenants', 'tenant_domains', 'tenant_members', 'projects'] LOOP
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_policies
                    WHERE schemaname = 'platform' AND tablename = t AND policyname = 'graphql_read') THEN
      EXECUTE pg_catalog.format('CREATE POLICY graphql_read ON platform.%I FOR SELECT TO selfbase_graphql '
                                'USING (NULLIF(current_setting(''hasura.user'', true), '''') IS NULL)', t);
    END IF;
  END LOOP;
END
$graphql$;
"""
