# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0007: security, round 3. Dunning policy as control-plane data; Stripe objects bounded to their
tenant, plan and clock; metering bounded per entry, per batch and per period, with overflow-safe sums; quota
lock rows written only through a definer; imported audit rows stamped; the monitor without billing_standing()."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0007"
NAME = "security_round3"
SQL = r"""
-- selfbase platform schema, version 0007: security, round 3.
DO $roles$
BEGIN
  -- Owns lock_quota(): the only role that writes quota lock rows. Nobody logs in as it or is a member of it.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'selfbase_quota_definer') THEN
    CREATE ROLE selfbase_quota_definer NOLOGIN NOBYPASSRLS;
  END IF;
END
$roles$;
GRANT USAGE ON SCHEMA platform TO selfbase_quota_definer;

SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = pg_catalog, platform, pg_temp;

-- Dunning policy is data the control plane owns (the billing role writes it on converge), never an argument
-- of the billing login's calls.
CREATE TABLE platform.billing_policy (
  singleton            boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  grace_days           integer NOT NULL DEFAULT 7 CHECK (grace_days BETWEEN 0 AND 365),
  reactivate_suspended boolean NOT NULL DEFAULT false,
  updated_at           timestamptz NOT NULL DEFAULT pg_catalog.now()
);
INSERT INTO platform.billing_policy DEFAULT VALUES;

-- Sums that a tenant's usage reaches saturate at bigint's bounds instead of failing for everyone.
CREATE FUNCTION platform.clamp_int8(p_value numeric) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
  SELECT LEAST(GREATEST(p_value, -9223372036854775808), 9223372036854775807)::pg_catalog.int8
$$;

CREATE OR REPLACE FUNCTION platform.metric_usage_at(p_tenant uuid, p_metric text, p_period text, p_at timestamptz)
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
    SELECT platform.clamp_int8(COALESCE(sum(quantity), 0)) INTO v_used FROM platform.usage_events
     WHERE tenant_id = p_tenant AND metric = p_metric AND occurred_at >= v_from AND occurred_at < v_to;
  ELSIF p_period = 'none' THEN
    SELECT platform.clamp_int8(COALESCE(sum(quantity), 0)) INTO v_used FROM platform.usage_rollups_daily
     WHERE tenant_id = p_tenant AND metric = p_metric;
  ELSE
    SELECT platform.clamp_int8(COALESCE(sum(quantity), 0)) INTO v_used FROM platform.usage_rollups_daily
     WHERE tenant_id = p_tenant AND metric = p_metric
       AND day >= (v_from AT TIME ZONE 'UTC')::date AND day < (v_to AT TIME ZONE 'UTC')::date;
  END IF;
  RETURN COALESCE(v_used, 0);
END
$$;

CREATE OR REPLACE FUNCTION platform.rollup_usage_event() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
BEGIN
  INSERT INTO platform.usage_rollups_daily AS r (tenant_id, metric, day, quantity, events)
  VALUES (NEW.tenant_id, NEW.metric, (NEW.occurred_at AT TIME ZONE 'UTC')::pg_catalog.date, NEW.quantity, 1)
  ON CONFLICT (tenant_id, metric, day)
  DO UPDATE SET quantity = platform.clamp_int8(r.quantity::pg_catalog.numeric + EXCLUDED.quantity),
                events = r.events + 1;
  RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION platform.check_quota_at(p_tenant uuid, p_metric text, p_requested bigint, p_at timestamptz)
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
    q.limit_value IS NULL OR q.mode <> 'hard' OR v_used::numeric + p_requested <= q.limit_value,
    v_used,
    q.limit_value,
    CASE WHEN q.limit_value IS NULL THEN NULL ELSE platform.clamp_int8(greatest(q.limit_value::numeric - v_used, 0)) END,
    CASE WHEN q.limit_value IS NULL THEN NULL WHEN q.limit_value = 0 THEN 100.0
         ELSE round(v_used * 100.0 / q.limit_value, 2) END,
    platform.quota_state(platform.clamp_int8(v_used::numeric + p_requested), q.limit_value),
    q.mode;
END
$$;

CREATE OR REPLACE FUNCTION platform.quota_state(p_used bigint, p_limit bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE WHEN p_limit IS NULL THEN 'ok'
              WHEN p_used > p_limit THEN 'exceeded'
              WHEN p_used::numeric * 100 >= p_limit::numeric * 80 THEN 'warning'
              ELSE 'ok' END
$$;

-- A refused event: its object names another tenant's invoice.
ALTER TABLE platform.stripe_events DROP CONSTRAINT stripe_events_outcome_check,
  ADD CONSTRAINT stripe_events_outcome_check
  CHECK (outcome IN ('pending', 'applied', 'stale', 'ignored', 'unknown_customer', 'refused'));

-- Imported audit rows say so: their actor and time are what a file claimed.
ALTER TABLE platform.audit_log ADD COLUMN imported_at timestamptz, ADD COLUMN imported_by text;

-- Quota lock rows are written only through lock_quota(): no login keeps a privilege that allows LOCK TABLE.
CREATE POLICY quota_definer ON platform.quota_locks TO selfbase_quota_definer USING (true) WITH CHECK (true);

-- Move a tenant's dunning state to what the mirrors say, by the stored policy.
CREATE FUNCTION platform.billing_settle(p_tenant uuid, OUT status_before text, OUT status_after text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_tenant record;
  v_dun record;
  v_want record;
  v_grace pg_catalog.interval;
  v_state pg_catalog.text;
  v_status pg_catalog.text;
  v_policy record;
BEGIN
  SELECT p.grace_days, p.reactivate_suspended INTO v_policy FROM platform.billing_policy p;
  v_grace := pg_catalog.make_interval(days => COALESCE(v_policy.grace_days, 7));
  SELECT t.id, t.slug, t.status INTO v_tenant FROM platform.tenants t WHERE t.id = p_tenant FOR UPDATE;
  status_before := v_tenant.status;
  status_after := v_tenant.status;
  IF NOT FOUND OR v_tenant.status IN ('deleted', 'canceled') THEN
    RETURN;
  END IF;
  SELECT * INTO v_dun FROM platform.tenant_dunning d WHERE d.tenant_id = p_tenant FOR UPDATE;
  SELECT * INTO v_want FROM platform.billing_standing(p_tenant);
  IF v_want.standing = 'ok' THEN
    IF v_dun.tenant_id IS NULL THEN
      RETURN;
    END IF;
    DELETE FROM platform.tenant_dunning d WHERE d.tenant_id = p_tenant;
    IF v_dun.owns_status OR COALESCE(v_policy.reactivate_suspended, false) THEN
      v_status := CASE WHEN v_dun.prior_status IN ('trial', 'active') THEN v_dun.prior_status ELSE 'active' END;
    END IF;
    v_state := 'paid';
  ELSE
    v_state := CASE WHEN v_want.standing = 'suspended'
                      OR (v_dun.tenant_id IS NOT NULL AND v_dun.grace_ends_at <= pg_catalog.now())
                    THEN 'suspended' ELSE 'past_due' END;
    IF v_dun.tenant_id IS NULL THEN
      INSERT INTO platform.tenant_dunning (tenant_id, state, reason, prior_status, owns_status, grace_ends_at)
      VALUES (p_tenant, v_state, v_want.reason, v_tenant.status, v_tenant.status IN ('trial', 'active'),
              pg_catalog.now() + v_grace);
      IF v_tenant.status IN ('trial', 'active') THEN
        v_status := v_state;
      END IF;
    ELSIF v_dun.state IS DISTINCT FROM v_state OR v_dun.reason IS DISTINCT FROM v_want.reason THEN
      UPDATE platform.tenant_dunning d SET state = v_state, reason = v_want.reason, updated_at = pg_catalog.now()
       WHERE d.tenant_id = p_tenant;
      IF v_dun.owns_status THEN
        v_status := v_state;
      END IF;
    END IF;
  END IF;
  IF v_status IS NOT NULL AND v_status <> v_tenant.status THEN
    UPDATE platform.tenants t SET status = v_status, updated_at = pg_catalog.now() WHERE t.id = p_tenant;
    status_after := v_status;
  END IF;
  IF v_state = 'paid' OR v_dun.tenant_id IS NULL OR v_dun.state IS DISTINCT FROM v_state
     OR status_after <> status_before THEN
    INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action, before, after)
    VALUES (p_tenant, 'dunning', v_tenant.slug, 'update',
            pg_catalog.jsonb_build_object('status', status_before, 'dunning', v_dun.state),
            pg_catalog.jsonb_build_object('status', status_after,
                                          'dunning', CASE WHEN v_state = 'paid' THEN NULL ELSE v_state END,
                                          'reason', v_want.reason));
  END IF;
END
$$;

-- Apply the current state of the event's object (see 0006), without a policy argument. An invoice keeps the
-- tenant and customer it was first mirrored with (else: outcome 'refused'); metadata.plan_code names a plan only
-- when it is active and the subscription's licensed price is one of that plan's prices.
CREATE FUNCTION platform.stripe_event_apply(p_id text, p_object jsonb)
RETURNS TABLE (outcome text, tenant text, status_before text, status_after text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_event record;
  v_kind pg_catalog.text := p_object ->> 'object';
  v_customer pg_catalog.text;
  v_tenant record;
  v_tenant_id pg_catalog.uuid;
  v_settle record;
  v_pm pg_catalog.jsonb;
  v_price pg_catalog.text;
  v_held record;
BEGIN
  SELECT e.id, e.outcome INTO v_event FROM platform.stripe_events e WHERE e.id = p_id FOR UPDATE;
  IF NOT FOUND OR v_event.outcome <> 'pending' THEN
    RAISE EXCEPTION 'stripe_event_apply: event % was not begun in this transaction', p_id USING ERRCODE = '22023';
  END IF;
  outcome := 'ignored';
  IF p_object IS NOT NULL AND v_kind IN ('subscription', 'invoice', 'customer') THEN
    v_customer := CASE WHEN v_kind = 'customer' THEN p_object ->> 'id' ELSE p_object ->> 'customer' END;
    SELECT t.id, t.slug INTO v_tenant FROM platform.tenants t WHERE t.stripe_customer_id = v_customer;
    IF NOT FOUND THEN
      outcome := 'unknown_customer';
    ELSE
      tenant := v_tenant.slug;
      v_tenant_id := v_tenant.id;
      outcome := 'applied';
      IF v_kind = 'subscription' THEN
        v_price := (SELECT i #>> '{price,id}' FROM pg_catalog.jsonb_array_elements(p_object #> '{items,data}') i
                     WHERE i #>> '{price,recurring,usage_type}' = 'licensed' LIMIT 1);
        -- a first sighting gets its row, which the update below fills
        INSERT INTO platform.subscriptions (tenant_id, stripe_customer_id, stripe_subscription_id, status)
        VALUES (v_tenant.id, v_customer, p_object ->> 'id', p_object ->> 'status')
        ON CONFLICT (tenant_id) DO NOTHING;
        UPDATE platform.subscriptions s
           SET stripe_subscription_id = p_object ->> 'id', stripe_customer_id = v_customer,
               status = p_object ->> 'status',
               items = COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                   'id', i ->> 'id', 'price', i #>> '{price,id}', 'quantity', i -> 'quantity',
                                   'current_period_start', i -> 'current_period_start',
                                   'current_period_end', i -> 'current_period_end'))
                                   FROM pg_catalog.jsonb_array_elements(p_object #> '{items,data}') i), '[]'),
               current_period_start = pg_catalog.to_timestamp((p_object #>> '{items,data,0,current_period_start}')::pg_catalog.float8),
               current_period_end = pg_catalog.to_timestamp((p_object #>> '{items,data,0,current_period_end}')::pg_catalog.float8),
               cancel_at_period_end = COALESCE((p_object ->> 'cancel_at_period_end')::pg_catalog.bool, false),
               cancel_at = pg_catalog.to_timestamp((p_object ->> 'cancel_at')::pg_catalog.float8),
               canceled_at = pg_catalog.to_timestamp((p_object ->> 'canceled_at')::pg_catalog.float8),
               trial_end = pg_catalog.to_timestamp((p_object ->> 'trial_end')::pg_catalog.float8),
               started_at = pg_catalog.to_timestamp((p_object ->> 'start_date')::pg_catalog.float8),
               stripe_price_id = COALESCE(v_price, s.stripe_price_id),
               -- metadata names a plan only when it is active and the subscription's price is one of its own
               plan_code = COALESCE((SELECT p.code FROM platform.plans p
                                       JOIN platform.plan_prices pp ON pp.plan_code = p.code
                                      WHERE p.code = p_object #>> '{metadata,plan_code}' AND p.active
                                        AND pp.stripe_price_id = v_price LIMIT 1),
                                    s.plan_code),
               updated_at = pg_catalog.now(), synced_at = pg_catalog.now()
         WHERE s.tenant_id = v_tenant.id
           -- the mirrored subscription, or a newer one replacing one that ended
           AND (s.stripe_subscription_id IS NULL OR s.stripe_subscription_id = p_object ->> 'id'
                OR (s.status IN ('canceled', 'incomplete_expired')
                    AND p_object ->> 'status' NOT IN ('canceled', 'incomplete_expired')));
        IF NOT FOUND THEN
          outcome := 'stale';  -- about a subscription other than the tenant's live one
        END IF;
      ELSIF v_kind = 'invoice' THEN
        -- an invoice keeps the tenant and customer it was first mirrored with
        SELECT v.tenant_id, v.stripe_customer_id INTO v_held FROM platform.invoices v
         WHERE v.stripe_invoice_id = p_object ->> 'id';
        IF FOUND AND (v_held.tenant_id <> v_tenant.id OR v_held.stripe_customer_id <> v_customer) THEN
          outcome := 'refused';
        ELSE
        INSERT INTO platform.invoices AS v (stripe_invoice_id, tenant_id, stripe_customer_id, stripe_subscription_id,
            number, status, currency, amount_due, amount_paid, amount_remaining, total, attempt_count,
            period_start, period_end, due_date, hosted_invoice_url, invoice_pdf, lines, created, synced_at)
        VALUES (p_object ->> 'id', v_tenant.id, v_customer,
                COALESCE(p_object #>> '{parent,subscription_details,subscription}', p_object ->> 'subscription'),
                p_object ->> 'number', p_object ->> 'status', p_object ->> 'currency',
                (p_object ->> 'amount_due')::pg_catalog.int8, (p_object ->> 'amount_paid')::pg_catalog.int8,
                (p_object ->> 'amount_remaining')::pg_catalog.int8, (p_object ->> 'total')::pg_catalog.int8,
                COALESCE((p_object ->> 'attempt_count')::pg_catalog.int4, 0),
                pg_catalog.to_timestamp((p_object ->> 'period_start')::pg_catalog.float8),
                pg_catalog.to_timestamp((p_object ->> 'period_end')::pg_catalog.float8),
                pg_catalog.to_timestamp((p_object ->> 'due_date')::pg_catalog.float8),
                p_object ->> 'hosted_invoice_url', p_object ->> 'invoice_pdf',
                COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                            'description', l ->> 'description', 'amount', l -> 'amount', 'quantity', l -> 'quantity',
                            'period_start', l #> '{period,start}', 'period_end', l #> '{period,end}'))
                            FROM pg_catalog.jsonb_array_elements(p_object #> '{lines,data}') l), '[]'),
                pg_catalog.to_timestamp((p_object ->> 'created')::pg_catalog.float8), pg_catalog.now())
        ON CONFLICT (stripe_invoice_id) DO UPDATE
          SET number = EXCLUDED.number, status = EXCLUDED.status, amount_due = EXCLUDED.amount_due,
              amount_paid = EXCLUDED.amount_paid, amount_remaining = EXCLUDED.amount_remaining,
              total = EXCLUDED.total, attempt_count = EXCLUDED.attempt_count, due_date = EXCLUDED.due_date,
              hosted_invoice_url = EXCLUDED.hosted_invoice_url, invoice_pdf = EXCLUDED.invoice_pdf,
              lines = EXCLUDED.lines, synced_at = EXCLUDED.synced_at;
        END IF;
      ELSE
        v_pm := CASE WHEN pg_catalog.jsonb_typeof(p_object #> '{invoice_settings,default_payment_method}') = 'object'
                     THEN p_object #> '{invoice_settings,default_payment_method}' END;
        INSERT INTO platform.customer_payment_state AS c (tenant_id, stripe_customer_id, has_payment_method, brand,
                                                           last4, delinquent, synced_at)
        VALUES (v_tenant.id, v_customer,
                COALESCE(p_object #>> '{invoice_settings,default_payment_method}', p_object ->> 'default_source')
                  IS NOT NULL AND NOT COALESCE((p_object ->> 'deleted')::pg_catalog.bool, false),
                v_pm #>> '{card,brand}', v_pm #>> '{card,last4}',
                COALESCE((p_object ->> 'delinquent')::pg_catalog.bool, false), pg_catalog.now())
        ON CONFLICT (tenant_id) DO UPDATE
          SET stripe_customer_id = EXCLUDED.stripe_customer_id, has_payment_method = EXCLUDED.has_payment_method,
              brand = EXCLUDED.brand, last4 = EXCLUDED.last4, delinquent = EXCLUDED.delinquent,
              synced_at = EXCLUDED.synced_at;
      END IF;
      IF outcome <> 'refused' THEN
        UPDATE platform.stripe_objects o SET synced_at = pg_catalog.now() WHERE o.id = p_object ->> 'id';
      END IF;
      SELECT * INTO v_settle FROM platform.billing_settle(v_tenant.id);
      status_before := v_settle.status_before;
      status_after := v_settle.status_after;
    END IF;
  END IF;
  UPDATE platform.stripe_events e
     SET outcome = stripe_event_apply.outcome, tenant_id = v_tenant_id, processed_at = pg_catalog.clock_timestamp()
   WHERE e.id = p_id;
  RETURN NEXT;
END
$$;

-- The clock's part of dunning, by the stored policy.
CREATE FUNCTION platform.billing_dunning_tick()
RETURNS TABLE (tenant text, status_before text, status_after text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT t.slug, s.status_before, s.status_after
    FROM platform.tenant_dunning d
    JOIN platform.tenants t ON t.id = d.tenant_id
    CROSS JOIN LATERAL platform.billing_settle(d.tenant_id) s
   WHERE d.state = 'past_due' AND d.grace_ends_at <= pg_catalog.now()
$$;

RESET ROLE;
CREATE OR REPLACE FUNCTION platform.lock_quota(p_tenant uuid, p_metric text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
BEGIN
  -- the session's own tenant, or any tenant for the control plane (session_user: the caller, not this owner)
  IF p_tenant IS DISTINCT FROM platform.current_tenant_id()
     AND NOT pg_catalog.pg_has_role(pg_catalog.session_user(), 'selfbase_admin', 'USAGE') THEN
    RAISE EXCEPTION 'lock_quota: tenant % is not this session''s tenant', p_tenant USING ERRCODE = '42501';
  END IF;
  INSERT INTO platform.quota_locks AS l (tenant_id, metric) VALUES (p_tenant, p_metric)
  ON CONFLICT (tenant_id, metric) DO UPDATE SET version = l.version + 1;
END
$$;

-- The reconcile cursor never moves past the database's clock.
CREATE OR REPLACE FUNCTION platform.stripe_sync_cursor(p_advance_to timestamptz DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_cursor pg_catalog.timestamptz;
BEGIN
  IF p_advance_to IS NOT NULL THEN
    -- never past the database's clock: a cursor in the future would stop reconcile
    INSERT INTO platform.stripe_sync_state AS s (name, cursor, runs)
    VALUES ('events', LEAST(p_advance_to, pg_catalog.now()), 1)
    ON CONFLICT (name) DO UPDATE SET cursor = GREATEST(s.cursor, EXCLUDED.cursor), runs = s.runs + 1,
                                     updated_at = pg_catalog.now();
  END IF;
  SELECT s.cursor INTO v_cursor FROM platform.stripe_sync_state s WHERE s.name = 'events';
  RETURN v_cursor;
END
$$;

-- Bounded usage: quantities per entry and per batch, nothing before the current period; overflow-safe sums.
CREATE OR REPLACE FUNCTION platform.meter_record(p_from_file text, p_from_offset bigint, p_to_file text, p_to_offset bigint,
                                      p_usage jsonb)
RETURNS TABLE (events integer, duplicates integer, skipped bigint, overage bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_source pg_catalog.text := pg_catalog.session_user();
  v_pos record;
  v_start pg_catalog.int8;
  v_tenant pg_catalog.uuid;
  v_current pg_catalog.uuid;
  v_slug pg_catalog.text;
  v_status pg_catalog.text;
  v_id pg_catalog.int8;
  v_used pg_catalog.int8;
  v_over pg_catalog.int8;
  v_total pg_catalog.numeric := 0;
  v_period pg_catalog.text;
  u record;
  q record;
BEGIN
  events := 0; duplicates := 0; skipped := 0; overage := 0;
  IF p_to_file IS NULL OR p_to_offset IS NULL OR p_to_offset < 0 OR p_to_file !~ '^[0-9a-f]{1,64}$' THEN
    RAISE EXCEPTION 'meter_record: p_to_file must be a hex file identity and p_to_offset >= 0'
      USING ERRCODE = '22023';
  END IF;
  IF p_usage IS NULL OR pg_catalog.jsonb_typeof(p_usage) <> 'array' THEN
    RAISE EXCEPTION 'meter_record: p_usage must be a JSON array' USING ERRCODE = '22023';
  END IF;
  INSERT INTO platform.meter_positions AS p (source, file_id, file_offset, batches)
  VALUES (v_source, p_to_file, 0, 0) ON CONFLICT (source) DO NOTHING;
  SELECT p.file_id, p.file_offset, p.batches INTO v_pos
    FROM platform.meter_positions p WHERE p.source = v_source FOR UPDATE;
  IF v_pos.batches > 0 AND (v_pos.file_id IS DISTINCT FROM p_from_file OR v_pos.file_offset IS DISTINCT FROM p_from_offset)
  THEN
    RAISE EXCEPTION 'meter_record: % is at %:%, not at %:%; reload the position', v_source,
                    v_pos.file_id, v_pos.file_offset, p_from_file, p_from_offset USING ERRCODE = 'SB003';
  END IF;
  IF p_to_file = p_from_file AND p_to_offset < p_from_offset THEN
    RAISE EXCEPTION 'meter_record: the position cannot move backwards in one file' USING ERRCODE = '22023';
  END IF;
  -- The batch starts where the position was, or at the start of a new file.
  v_start := CASE WHEN p_to_file = p_from_file THEN p_from_offset ELSE 0 END;
  FOR u IN SELECT x.tenant, x.metric, x.minute, x.quantity
             FROM pg_catalog.jsonb_to_recordset(p_usage) AS x(tenant pg_catalog.text, metric pg_catalog.text,
                                                              minute pg_catalog.int8, quantity pg_catalog.int8)
            ORDER BY x.tenant, x.metric, x.minute
  LOOP
    IF u.metric IS NULL OR u.metric NOT IN ('api_requests', 'bandwidth_bytes') OR u.quantity IS NULL
       OR u.quantity < 1 OR u.quantity > (CASE u.metric WHEN 'api_requests' THEN 1000000000 ELSE 1000000000000 END)
       OR u.minute IS NULL OR u.minute % 60 <> 0
       OR pg_catalog.to_timestamp(u.minute) > pg_catalog.now() + '5 minutes'::pg_catalog.interval THEN
      -- a known metric, 1 to 10^9 requests or 10^12 bytes, a whole minute at most 5 minutes ahead
      RAISE EXCEPTION 'meter_record: bad usage entry %', pg_catalog.row_to_json(u) USING ERRCODE = '22023';
    END IF;
    v_total := v_total + u.quantity;
    IF v_total > 100000000000000 THEN
      RAISE EXCEPTION 'meter_record: a batch carries at most 10^14 units in all' USING ERRCODE = '22023';
    END IF;
    IF u.tenant IS DISTINCT FROM v_slug THEN
      v_slug := u.tenant;
      SELECT t.id, t.status INTO v_tenant, v_status FROM platform.tenants t WHERE t.slug = u.tenant;
      v_current := CASE WHEN FOUND AND v_status <> 'deleted' THEN v_tenant END;
      -- the rollup trigger and row-level security act for this tenant
      PERFORM pg_catalog.set_config('app.tenant_id', COALESCE(v_current::pg_catalog.text, ''), true);
    END IF;
    IF v_current IS NULL THEN
      skipped := skipped + CASE WHEN u.metric = 'api_requests' THEN u.quantity ELSE 0 END;
      CONTINUE;
    END IF;
    SELECT * INTO q FROM platform.effective_quotas(v_current) e WHERE e.metric = u.metric;
    -- as record_usage: nothing before the current period (with 10 minutes for the last one's tail), which was
    -- rolled up, checked and may be invoiced; counted as skipped, so that the agent moves on
    v_period := CASE WHEN q.period IS NULL OR q.period = 'none' THEN 'month' ELSE q.period END;
    IF pg_catalog.to_timestamp(u.minute)
       < platform.period_start(v_period, pg_catalog.now() - '10 minutes'::pg_catalog.interval) THEN
      skipped := skipped + CASE WHEN u.metric = 'api_requests' THEN u.quantity ELSE 0 END;
      CONTINUE;
    END IF;
    IF q.mode = 'overage' THEN
      PERFORM platform.lock_quota(v_current, u.metric);
    END IF;
    INSERT INTO platform.usage_events (tenant_id, metric, quantity, idempotency_key, occurred_at)
    VALUES (v_current, u.metric, u.quantity,
            pg_catalog.format('edge/%s/%s/%s/%s/%s', v_source, p_to_file, v_start, u.metric, u.minute),
            pg_catalog.to_timestamp(u.minute))
    ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
      duplicates := duplicates + 1;
      CONTINUE;
    END IF;
    events := events + 1;
    IF q.mode = 'overage' AND q.limit_value IS NOT NULL THEN
      v_used := platform.metric_usage_at(v_current, u.metric, q.period, pg_catalog.to_timestamp(u.minute));
      v_over := LEAST(u.quantity::pg_catalog.numeric, v_used::pg_catalog.numeric - q.limit_value)::pg_catalog.int8;
      IF v_over > 0 THEN
        INSERT INTO platform.usage_overages (tenant_id, metric, usage_event_id, quantity, unit_price)
        VALUES (v_current, u.metric, v_id, v_over, q.overage_unit_price);
        overage := overage + v_over;
      END IF;
    END IF;
  END LOOP;
  PERFORM pg_catalog.set_config('app.tenant_id', '', true);
  UPDATE platform.meter_positions p
     SET file_id = p_to_file, file_offset = p_to_offset, batches = p.batches + 1, updated_at = pg_catalog.now()
   WHERE p.source = v_source;
  RETURN NEXT;
END
$$;

CREATE OR REPLACE FUNCTION platform.edge_enforcement(p_warn_percent integer DEFAULT 80)
RETURNS TABLE (slug text, status text, used bigint, limit_value bigint, mode text, period text,
               reset_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT t.slug, t.status, q.used, q.limit_value, q.mode, q.period,
         CASE WHEN q.period IS NULL THEN NULL ELSE platform.period_end(q.period, pg_catalog.now()) END
    FROM platform.tenants t
    LEFT JOIN LATERAL (SELECT s.used, s.limit_value, s.mode, s.period FROM platform.quota_status(t.id) s
                        WHERE s.metric = 'api_requests' AND s.limit_value IS NOT NULL) q ON true
   WHERE t.status IN ('past_due', 'suspended')
      OR (q.limit_value IS NOT NULL
          AND (q.mode = 'soft' OR q.used >= q.limit_value OR q.used::pg_catalog.numeric * 100 >= q.limit_value::pg_catalog.numeric * p_warn_percent))
   ORDER BY t.slug
$$;

CREATE OR REPLACE FUNCTION platform.meter_push_plan(p_settle interval, p_lookback interval)
RETURNS TABLE (identifier text, tenant text, metric text, hour timestamptz, quantity bigint,
               stripe_customer_id text, stripe_meter_id text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_from pg_catalog.timestamptz := pg_catalog.date_bin('1 hour', pg_catalog.now() - p_lookback, 'epoch');
  v_to pg_catalog.timestamptz := pg_catalog.date_bin('1 hour', pg_catalog.now() - p_settle, 'epoch');
BEGIN
  IF p_settle < '0'::pg_catalog.interval OR p_lookback > '34 days'::pg_catalog.interval THEN
    RAISE EXCEPTION 'meter_push_plan: p_settle must be >= 0 and p_lookback <= 34 days (Stripe takes 35)'
      USING ERRCODE = '22023';
  END IF;
  -- one planner at a time (a second waits, then plans nothing new)
  LOCK TABLE platform.meter_pushes IN SHARE ROW EXCLUSIVE MODE;
  INSERT INTO platform.meter_pushes (identifier, tenant_id, metric, hour, revision, quantity, stripe_customer_id,
                                     stripe_meter_id)
  SELECT pg_catalog.format('sb_%s_%s_%s_%s', pg_catalog.replace(u.tenant_id::pg_catalog.text, '-', ''),
                           pg_catalog.left(pg_catalog.md5(u.metric), 8),
                           pg_catalog.date_part('epoch', u.hour)::pg_catalog.int8, COALESCE(p.rev, 0) + 1),
         u.tenant_id, u.metric, u.hour, COALESCE(p.rev, 0) + 1, u.quantity - COALESCE(p.pushed, 0),
         t.stripe_customer_id, q.stripe_meter_id
    FROM (SELECT o.tenant_id, o.metric, pg_catalog.date_bin('1 hour', e.occurred_at, 'epoch') AS hour,
                 LEAST(pg_catalog.sum(o.quantity), 9223372036854775807)::pg_catalog.int8 AS quantity
            FROM platform.usage_overages o
            JOIN platform.usage_events e ON e.id = o.usage_event_id
           -- an overage is recorded at most 5 minutes before its event occurred (meter_record's limit)
           WHERE o.created_at >= v_from - '5 minutes'::pg_catalog.interval
             AND e.occurred_at >= v_from AND e.occurred_at < v_to
           GROUP BY 1, 2, 3) u
    JOIN platform.tenants t ON t.id = u.tenant_id AND t.stripe_customer_id IS NOT NULL
    JOIN platform.plan_quotas q ON q.plan_code = t.plan_code AND q.metric = u.metric AND q.stripe_meter_id IS NOT NULL
    LEFT JOIN (SELECT m.tenant_id, m.metric, m.hour, pg_catalog.max(m.revision) AS rev,
                      pg_catalog.sum(m.quantity) AS pushed
                 FROM platform.meter_pushes m WHERE m.hour >= v_from GROUP BY 1, 2, 3) p
           ON p.tenant_id = u.tenant_id AND p.metric = u.metric AND p.hour = u.hour
   WHERE u.quantity > COALESCE(p.pushed, 0);
  RETURN QUERY
    SELECT m.identifier, t.slug, m.metric, m.hour, m.quantity, m.stripe_customer_id, m.stripe_meter_id
      FROM platform.meter_pushes m JOIN platform.tenants t ON t.id = m.tenant_id
     WHERE m.sent_at IS NULL ORDER BY m.hour, m.identifier;
END
$$;

DROP FUNCTION platform.stripe_event_apply(text, jsonb, jsonb);
DROP FUNCTION platform.billing_dunning_tick(jsonb);
DROP FUNCTION platform.billing_settle(uuid, jsonb);
ALTER FUNCTION platform.lock_quota(uuid, text) OWNER TO selfbase_quota_definer;
ALTER FUNCTION platform.billing_settle(uuid) OWNER TO selfbase_billing_definer;
ALTER FUNCTION platform.stripe_event_apply(text, jsonb) OWNER TO selfbase_billing_definer;
ALTER FUNCTION platform.billing_dunning_tick() OWNER TO selfbase_billing_definer;

-- Grants
REVOKE ALL ON platform.billing_policy FROM PUBLIC;
GRANT SELECT, UPDATE (grace_days, reactivate_suspended, updated_at) ON platform.billing_policy TO selfbase_admin;
GRANT SELECT ON platform.billing_policy TO selfbase_billing_definer;
REVOKE ALL ON FUNCTION platform.clamp_int8(numeric), platform.billing_settle(uuid),
  platform.stripe_event_apply(text, jsonb), platform.billing_dunning_tick() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION platform.clamp_int8(numeric)
  TO selfbase_app, selfbase_graphql, selfbase_admin, selfbase_monitor;
GRANT EXECUTE ON FUNCTION platform.stripe_event_apply(text, jsonb), platform.billing_dunning_tick() TO selfbase_billing;
-- the monitor gets no Stripe id, and billing_standing()'s reason names them
REVOKE EXECUTE ON FUNCTION platform.billing_standing(uuid) FROM selfbase_monitor;
REVOKE INSERT, UPDATE ON platform.quota_locks FROM selfbase_app, selfbase_graphql, selfbase_admin;
GRANT SELECT, INSERT, UPDATE ON platform.quota_locks TO selfbase_quota_definer;
GRANT EXECUTE ON FUNCTION platform.current_tenant_id() TO selfbase_quota_definer;
-- record_usage() runs as selfbase_owner, which no longer owns lock_quota()
GRANT EXECUTE ON FUNCTION platform.lock_quota(uuid, text) TO selfbase_owner;
"""
