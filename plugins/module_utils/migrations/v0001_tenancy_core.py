# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0001: tenancy core (tenants, domains, members, plans, quotas, usage, audit, RLS)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0001"
NAME = "tenancy_core"
SQL = r"""
-- selfbase platform schema, version 0001: tenancy core.
-- Runs in one transaction, as a superuser (or a role with CREATEROLE that
-- owns the database); objects are owned by selfbase_owner.

DO $roles$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'selfbase_owner') THEN
    CREATE ROLE selfbase_owner NOLOGIN;
  END IF;
  -- The application: owns nothing, no BYPASSRLS, sees one tenant at a time.
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'selfbase_app') THEN
    CREATE ROLE selfbase_app NOLOGIN NOBYPASSRLS;
  END IF;
  -- The control plane (Ansible modules): all tenants, through its own policy.
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'selfbase_admin') THEN
    CREATE ROLE selfbase_admin NOLOGIN NOBYPASSRLS;
  END IF;
  -- Monitoring: quota_status() only.
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'selfbase_monitor') THEN
    CREATE ROLE selfbase_monitor NOLOGIN NOBYPASSRLS;
  END IF;
END
$roles$;

CREATE SCHEMA IF NOT EXISTS platform AUTHORIZATION selfbase_owner;
GRANT CREATE ON SCHEMA platform TO selfbase_owner;
REVOKE ALL ON SCHEMA platform FROM PUBLIC;
GRANT USAGE ON SCHEMA platform TO selfbase_app, selfbase_admin, selfbase_monitor;
SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = platform, pg_catalog;

-- The tenant a session acts for: app.tenant_id, else Hasura's session JSON.
CREATE FUNCTION platform.current_tenant_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE AS $$
  SELECT COALESCE(
    NULLIF(current_setting('app.tenant_id', true), ''),
    NULLIF(current_setting('hasura.user', true), '')::jsonb ->> 'x-hasura-tenant-id'
  )::uuid
$$;

CREATE TABLE platform.metrics (
  name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{1,62}$'),
  unit        text NOT NULL DEFAULT 'count' CHECK (unit IN ('count', 'bytes', 'requests')),
  -- events: summed usage_events; members/projects: rows counted in that table
  source      text NOT NULL DEFAULT 'events' CHECK (source IN ('events', 'members', 'projects')),
  description text NOT NULL DEFAULT ''
);
INSERT INTO platform.metrics (name, unit, source, description) VALUES
  ('api_requests', 'requests', 'events', 'API requests'),
  ('storage_bytes', 'bytes', 'events', 'Stored bytes (events carry deltas)'),
  ('bandwidth_bytes', 'bytes', 'events', 'Egress bytes'),
  ('members', 'count', 'members', 'Members of the tenant'),
  ('projects', 'count', 'projects', 'Projects of the tenant');

CREATE TABLE platform.plans (
  code              text PRIMARY KEY CHECK (code ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
  name              text NOT NULL,
  description       text NOT NULL DEFAULT '',
  features          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(features) = 'object'),
  active            boolean NOT NULL DEFAULT true,
  stripe_product_id text UNIQUE,
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE platform.plan_prices (
  plan_code       text NOT NULL REFERENCES platform.plans (code) ON UPDATE CASCADE ON DELETE CASCADE,
  billing_cycle   text NOT NULL CHECK (billing_cycle IN ('month', 'year')),
  currency        text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
  unit_amount     bigint NOT NULL CHECK (unit_amount >= 0),
  lookup_key      text UNIQUE,
  stripe_price_id text UNIQUE,
  active          boolean NOT NULL DEFAULT true,
  PRIMARY KEY (plan_code, billing_cycle, currency)
);

CREATE TABLE platform.plan_quotas (
  plan_code          text NOT NULL REFERENCES platform.plans (code) ON UPDATE CASCADE ON DELETE CASCADE,
  metric             text NOT NULL REFERENCES platform.metrics (name) ON UPDATE CASCADE,
  limit_value        bigint CHECK (limit_value >= 0),  -- NULL: unlimited
  period             text NOT NULL DEFAULT 'month' CHECK (period IN ('hour', 'day', 'month', 'none')),
  mode               text NOT NULL DEFAULT 'hard' CHECK (mode IN ('hard', 'soft', 'overage')),
  overage_unit_price numeric(20, 10) CHECK (overage_unit_price >= 0),
  PRIMARY KEY (plan_code, metric)
);

CREATE TABLE platform.tenants (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  slug               text NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{1,62}$'),
  name               text NOT NULL,
  status             text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('trial', 'active', 'past_due', 'suspended', 'canceled', 'deleted')),
  plan_code          text REFERENCES platform.plans (code) ON UPDATE CASCADE,
  billing_cycle      text NOT NULL DEFAULT 'month' CHECK (billing_cycle IN ('month', 'year')),
  trial_ends_at      timestamptz,
  settings           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(settings) = 'object'),
  branding           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(branding) = 'object'),
  features           jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(features) = 'object'),
  stripe_customer_id text UNIQUE,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  deleted_at         timestamptz
);
CREATE INDEX tenants_status_idx ON platform.tenants (status);
CREATE INDEX tenants_plan_idx ON platform.tenants (plan_code);

CREATE TABLE platform.tenant_domains (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id   uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  domain      text NOT NULL CHECK (domain = lower(domain)
                AND domain ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$'),
  verified    boolean NOT NULL DEFAULT false,
  is_primary  boolean NOT NULL DEFAULT false,
  created_at  timestamptz NOT NULL DEFAULT now(),
  UNIQUE (domain)
);
CREATE INDEX tenant_domains_tenant_idx ON platform.tenant_domains (tenant_id);
CREATE UNIQUE INDEX tenant_domains_one_primary ON platform.tenant_domains (tenant_id) WHERE is_primary;

CREATE TABLE platform.tenant_members (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id   uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  user_id     uuid NOT NULL,
  role        text NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member', 'guest')),
  created_at  timestamptz NOT NULL DEFAULT now(),
  UNIQUE (tenant_id, user_id)
);

CREATE TABLE platform.tenant_invitations (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id   uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  email       text NOT NULL CHECK (position('@' IN email) > 1),
  role        text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member', 'guest')),
  -- sha256 of the token; the token itself is never stored
  token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
  expires_at  timestamptz NOT NULL DEFAULT now() + interval '7 days',
  accepted_at timestamptz,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tenant_invitations_tenant_idx ON platform.tenant_invitations (tenant_id);

CREATE TABLE platform.projects (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id   uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  name        text NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  UNIQUE (tenant_id, name)
);

CREATE TABLE platform.tenant_quotas (
  tenant_id          uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  metric             text NOT NULL REFERENCES platform.metrics (name) ON UPDATE CASCADE,
  limit_value        bigint CHECK (limit_value >= 0),  -- NULL: unlimited
  period             text NOT NULL DEFAULT 'month' CHECK (period IN ('hour', 'day', 'month', 'none')),
  mode               text NOT NULL DEFAULT 'hard' CHECK (mode IN ('hard', 'soft', 'overage')),
  overage_unit_price numeric(20, 10) CHECK (overage_unit_price >= 0),
  PRIMARY KEY (tenant_id, metric)
);

CREATE TABLE platform.usage_events (
  id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id       uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  metric          text NOT NULL REFERENCES platform.metrics (name) ON UPDATE CASCADE,
  quantity        bigint NOT NULL,
  idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
  occurred_at     timestamptz NOT NULL DEFAULT now(),
  UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX usage_events_window_idx ON platform.usage_events (tenant_id, metric, occurred_at);

CREATE TABLE platform.usage_rollups_daily (
  tenant_id  uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  metric     text NOT NULL REFERENCES platform.metrics (name) ON UPDATE CASCADE,
  day        date NOT NULL,
  quantity   bigint NOT NULL DEFAULT 0,
  events     bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant_id, metric, day)
);

CREATE TABLE platform.usage_overages (
  id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  tenant_id    uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  metric       text NOT NULL REFERENCES platform.metrics (name) ON UPDATE CASCADE,
  usage_event_id bigint NOT NULL REFERENCES platform.usage_events (id) ON DELETE CASCADE,
  quantity     bigint NOT NULL CHECK (quantity > 0),
  unit_price   numeric(20, 10),
  created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_overages_tenant_idx ON platform.usage_overages (tenant_id, metric, created_at);

CREATE TABLE platform.subscriptions (
  tenant_id              uuid PRIMARY KEY REFERENCES platform.tenants (id) ON DELETE CASCADE,
  stripe_customer_id     text,
  stripe_subscription_id text UNIQUE,
  stripe_item_id         text,
  plan_code              text REFERENCES platform.plans (code) ON UPDATE CASCADE,
  billing_cycle          text CHECK (billing_cycle IN ('month', 'year')),
  status                 text NOT NULL CHECK (status IN ('incomplete', 'incomplete_expired', 'trialing', 'active',
                                                         'past_due', 'canceled', 'unpaid', 'paused')),
  current_period_end     timestamptz,
  cancel_at_period_end   boolean NOT NULL DEFAULT false,
  updated_at             timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE platform.audit_log (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at         timestamptz NOT NULL DEFAULT now(),
  actor      text NOT NULL DEFAULT session_user,
  tenant_id  uuid REFERENCES platform.tenants (id) ON DELETE SET NULL,
  entity     text NOT NULL,
  entity_key text NOT NULL,
  action     text NOT NULL CHECK (action IN ('create', 'update', 'delete')),
  before     jsonb,
  after      jsonb
);
CREATE INDEX audit_log_tenant_idx ON platform.audit_log (tenant_id, at);
CREATE INDEX audit_log_entity_idx ON platform.audit_log (entity, entity_key, at);

-- Row-level security: enabled and forced on every tenant-scoped table.
DO $rls$
DECLARE
  t text;
  col text;
BEGIN
  FOR t, col IN VALUES
    ('tenants', 'id'), ('tenant_domains', 'tenant_id'), ('tenant_members', 'tenant_id'),
    ('tenant_invitations', 'tenant_id'), ('projects', 'tenant_id'), ('tenant_quotas', 'tenant_id'),
    ('usage_events', 'tenant_id'), ('usage_rollups_daily', 'tenant_id'), ('usage_overages', 'tenant_id'),
    ('subscriptions', 'tenant_id'), ('audit_log', 'tenant_id')
  LOOP
    EXECUTE format('ALTER TABLE platform.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE format('ALTER TABLE platform.%I FORCE ROW LEVEL SECURITY', t);
    EXECUTE format('CREATE POLICY tenant_isolation ON platform.%I USING (%I = platform.current_tenant_id())'
                   ' WITH CHECK (%I = platform.current_tenant_id())', t, col, col);
    EXECUTE format('CREATE POLICY control_plane ON platform.%I TO selfbase_admin USING (true) WITH CHECK (true)', t);
  END LOOP;
  -- Monitoring reads usage of every tenant, and nothing else.
  FOREACH t IN ARRAY ARRAY['tenants', 'tenant_quotas', 'tenant_members', 'projects', 'usage_events',
                           'usage_rollups_daily']
  LOOP
    EXECUTE format('CREATE POLICY monitoring ON platform.%I FOR SELECT TO selfbase_monitor USING (true)', t);
  END LOOP;
END
$rls$;

-- Quotas -------------------------------------------------------------------

-- The quota in force: the tenant's override, else its plan's.
CREATE FUNCTION platform.effective_quotas(p_tenant uuid)
RETURNS TABLE (metric text, limit_value bigint, period text, mode text, overage_unit_price numeric)
LANGUAGE sql STABLE AS $$
  SELECT tq.metric, tq.limit_value, tq.period, tq.mode, tq.overage_unit_price
    FROM platform.tenant_quotas tq WHERE tq.tenant_id = p_tenant
  UNION ALL
  SELECT pq.metric, pq.limit_value, pq.period, pq.mode, pq.overage_unit_price
    FROM platform.tenants t JOIN platform.plan_quotas pq ON pq.plan_code = t.plan_code
   WHERE t.id = p_tenant
     AND NOT EXISTS (SELECT FROM platform.tenant_quotas tq WHERE tq.tenant_id = p_tenant AND tq.metric = pq.metric)
$$;

-- Periods are cut in UTC, like the daily rollups, whatever the session's TimeZone.
CREATE FUNCTION platform.period_start(p_period text, p_at timestamptz DEFAULT now()) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE p_period WHEN 'none' THEN '-infinity'::timestamptz
         ELSE date_trunc(p_period, p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' END
$$;

-- Usage of a metric in the current period. Day and month windows read the
-- daily rollups (UTC days); hour windows read the events.
CREATE FUNCTION platform.metric_usage(p_tenant uuid, p_metric text, p_period text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
  v_source text;
  v_used bigint;
BEGIN
  SELECT source INTO v_source FROM platform.metrics WHERE name = p_metric;
  IF v_source = 'members' THEN
    SELECT count(*) INTO v_used FROM platform.tenant_members WHERE tenant_id = p_tenant;
  ELSIF v_source = 'projects' THEN
    SELECT count(*) INTO v_used FROM platform.projects WHERE tenant_id = p_tenant;
  ELSIF p_period = 'hour' THEN
    SELECT COALESCE(sum(quantity), 0) INTO v_used FROM platform.usage_events
     WHERE tenant_id = p_tenant AND metric = p_metric AND occurred_at >= platform.period_start('hour');
  ELSE
    SELECT COALESCE(sum(quantity), 0) INTO v_used FROM platform.usage_rollups_daily
     WHERE tenant_id = p_tenant AND metric = p_metric
       AND day >= (platform.period_start(p_period) AT TIME ZONE 'UTC')::date;
  END IF;
  RETURN COALESCE(v_used, 0);
END
$$;

CREATE FUNCTION platform.quota_state(p_used bigint, p_limit bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_limit IS NULL THEN 'ok'
              WHEN p_used > p_limit THEN 'exceeded'
              WHEN p_used * 100 >= p_limit * 80 THEN 'warning'
              ELSE 'ok' END
$$;

-- Would `requested` more units of `metric` be allowed for `tenant` now?
CREATE FUNCTION platform.check_quota(p_tenant uuid, p_metric text, p_requested bigint DEFAULT 1)
RETURNS TABLE (allowed boolean, used bigint, limit_value bigint, remaining bigint,
               percent numeric, status text, mode text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  q record;
  v_used bigint;
BEGIN
  -- Fail closed: a tenant this session cannot see has no quota to grant.
  IF NOT EXISTS (SELECT FROM platform.tenants t WHERE t.id = p_tenant) THEN
    RAISE EXCEPTION 'check_quota: tenant % does not exist or is not visible to this session', p_tenant
      USING ERRCODE = '42501';
  END IF;
  SELECT * INTO q FROM platform.effective_quotas(p_tenant) e WHERE e.metric = p_metric;
  IF NOT FOUND THEN  -- no quota: unlimited
    RETURN QUERY SELECT true, platform.metric_usage(p_tenant, p_metric, 'month'), NULL::bigint, NULL::bigint,
                        NULL::numeric, 'ok'::text, NULL::text;
    RETURN;
  END IF;
  v_used := platform.metric_usage(p_tenant, p_metric, q.period);
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

-- Every quota of a tenant, with usage against it.
CREATE FUNCTION platform.quota_status(p_tenant uuid)
RETURNS TABLE (metric text, used bigint, limit_value bigint, percent numeric, status text, mode text, period text)
LANGUAGE sql STABLE AS $$
  SELECT e.metric, u.used, e.limit_value,
         CASE WHEN e.limit_value IS NULL THEN NULL WHEN e.limit_value = 0 THEN 100.0
              ELSE round(u.used * 100.0 / e.limit_value, 2) END,
         platform.quota_state(u.used, e.limit_value), e.mode, e.period
    FROM platform.effective_quotas(p_tenant) e
   CROSS JOIN LATERAL (SELECT platform.metric_usage(p_tenant, e.metric, e.period) AS used) u
   ORDER BY e.metric
$$;

-- Hard count limits (members, projects): refuse the insert past the limit.
CREATE FUNCTION platform.enforce_count_quota() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v_metric text := TG_ARGV[0];
  c record;
BEGIN
  -- Another tenant's row: row-level security refuses it after this trigger.
  IF NOT EXISTS (SELECT FROM platform.tenants t WHERE t.id = NEW.tenant_id) THEN
    RETURN NEW;
  END IF;
  -- serialise inserts of one tenant and metric, so two sessions cannot both pass
  PERFORM pg_advisory_xact_lock(hashtextextended(NEW.tenant_id::text || '/' || v_metric, 0));
  SELECT * INTO c FROM platform.check_quota(NEW.tenant_id, v_metric, 1);
  IF NOT c.allowed THEN
    RAISE EXCEPTION 'quota exceeded: tenant % already has % of % % allowed (hard limit)',
                    NEW.tenant_id, c.used, c.limit_value, v_metric
      USING ERRCODE = 'SB001', HINT = 'Raise the quota or remove existing rows first.';
  END IF;
  RETURN NEW;
END
$$;
CREATE TRIGGER enforce_members_quota BEFORE INSERT ON platform.tenant_members
  FOR EACH ROW EXECUTE FUNCTION platform.enforce_count_quota('members');
CREATE TRIGGER enforce_projects_quota BEFORE INSERT ON platform.projects
  FOR EACH ROW EXECUTE FUNCTION platform.enforce_count_quota('projects');

-- Rollups are written by the owner, so applications need no write access.
CREATE FUNCTION platform.rollup_usage_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform AS $$
BEGIN
  INSERT INTO platform.usage_rollups_daily AS r (tenant_id, metric, day, quantity, events)
  VALUES (NEW.tenant_id, NEW.metric, (NEW.occurred_at AT TIME ZONE 'UTC')::date, NEW.quantity, 1)
  ON CONFLICT (tenant_id, metric, day)
  DO UPDATE SET quantity = r.quantity + EXCLUDED.quantity, events = r.events + 1;
  RETURN NULL;
END
$$;
CREATE TRIGGER rollup_usage_event AFTER INSERT ON platform.usage_events
  FOR EACH ROW EXECUTE FUNCTION platform.rollup_usage_event();

-- Record usage once per idempotency key. Hard quotas refuse (SQLSTATE SB001),
-- soft ones allow, overage ones allow and record the excess. Row-level
-- security applies to the owner too (FORCE), so callers set app.tenant_id.
CREATE FUNCTION platform.record_usage(p_tenant uuid, p_metric text, p_quantity bigint, p_idempotency_key text,
                                      p_occurred_at timestamptz DEFAULT now())
RETURNS TABLE (recorded boolean, usage_event_id bigint, status text, overage bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform AS $$
DECLARE
  c record;
  q record;
  v_id bigint;
  v_over bigint := 0;
BEGIN
  IF NOT EXISTS (SELECT FROM platform.metrics WHERE name = p_metric AND source = 'events') THEN
    RAISE EXCEPTION 'record_usage: unknown usage metric "%"', p_metric USING ERRCODE = '22023';
  END IF;
  PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant::text || '/' || p_metric, 0));
  SELECT e.id INTO v_id FROM platform.usage_events e
   WHERE e.tenant_id = p_tenant AND e.idempotency_key = p_idempotency_key;
  IF FOUND THEN  -- a re-sent event: already counted
    RETURN QUERY SELECT false, v_id, 'duplicate'::text, 0::bigint;
    RETURN;
  END IF;
  SELECT * INTO c FROM platform.check_quota(p_tenant, p_metric, p_quantity);
  IF NOT c.allowed THEN
    RAISE EXCEPTION 'quota exceeded: tenant % has used % of % % this period; % more refused (hard limit)',
                    p_tenant, c.used, c.limit_value, p_metric, p_quantity
      USING ERRCODE = 'SB001';
  END IF;
  INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key, occurred_at)
  VALUES (p_tenant, p_metric, p_quantity, p_idempotency_key, p_occurred_at)
  ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
  RETURNING id INTO v_id;
  IF c.mode = 'overage' AND c.limit_value IS NOT NULL AND c.used + p_quantity > c.limit_value THEN
    v_over := least(p_quantity, c.used + p_quantity - c.limit_value);
    SELECT * INTO q FROM platform.effective_quotas(p_tenant) e WHERE e.metric = p_metric;
    INSERT INTO platform.usage_overages (tenant_id, metric, usage_event_id, quantity, unit_price)
    VALUES (p_tenant, p_metric, v_id, v_over, q.overage_unit_price);
  END IF;
  RETURN QUERY SELECT true, v_id, platform.quota_state(c.used + p_quantity, c.limit_value), v_over;
END
$$;

-- Least privilege ------------------------------------------------------------
REVOKE ALL ON ALL TABLES IN SCHEMA platform FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA platform FROM PUBLIC;

GRANT SELECT ON platform.metrics, platform.plans, platform.plan_prices, platform.plan_quotas TO selfbase_app;
GRANT SELECT ON platform.tenants, platform.tenant_domains, platform.tenant_quotas, platform.subscriptions,
                platform.usage_events, platform.usage_rollups_daily, platform.usage_overages TO selfbase_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON platform.tenant_members, platform.tenant_invitations,
                platform.projects TO selfbase_app;
GRANT UPDATE (name, settings, branding) ON platform.tenants TO selfbase_app;
GRANT EXECUTE ON FUNCTION platform.current_tenant_id(), platform.effective_quotas(uuid),
                platform.period_start(text, timestamptz), platform.metric_usage(uuid, text, text),
                platform.quota_state(bigint, bigint), platform.check_quota(uuid, text, bigint),
                platform.quota_status(uuid), platform.enforce_count_quota(),
                platform.record_usage(uuid, text, bigint, text, timestamptz)
  TO selfbase_app, selfbase_admin;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA platform TO selfbase_admin;

GRANT EXECUTE ON FUNCTION platform.quota_status(uuid), platform.effective_quotas(uuid),
                platform.metric_usage(uuid, text, text), platform.quota_state(bigint, bigint),
                platform.period_start(text, timestamptz), platform.current_tenant_id() TO selfbase_monitor;
GRANT SELECT ON platform.metrics, platform.plan_quotas, platform.tenants, platform.tenant_quotas,
                platform.tenant_members, platform.projects, platform.usage_events,
                platform.usage_rollups_daily TO selfbase_monitor;
"""
