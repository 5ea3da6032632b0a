# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0006: Stripe events back into PostgreSQL. An append-only event ledger, mirrors of invoices and
customers' payment state, and dunning. The receiver's logins (selfbase_billing) call three functions and
touch no table."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0006"
NAME = "billing_events"
SQL = r"""
-- selfbase platform schema, version 0006: the Stripe event ledger, mirrors and dunning.
DO $roles$
BEGIN
  -- The webhook receiver's and the reconcile job's logins: EXECUTE on the functions below, nothing else.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'selfbase_billing') THEN
    CREATE ROLE selfbase_billing NOLOGIN NOBYPASSRLS;
  END IF;
  -- Owns those functions; nobody logs in as it or is a member of it.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'selfbase_billing_definer') THEN
    CREATE ROLE selfbase_billing_definer NOLOGIN NOBYPASSRLS;
  END IF;
END
$roles$;
GRANT selfbase_admin TO selfbase_billing_definer;
GRANT USAGE ON SCHEMA platform TO selfbase_billing;

SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = pg_catalog, platform, pg_temp;

-- Every Stripe event the platform took, once, written in the transaction of its effect.
CREATE TABLE platform.stripe_events (
  id           text PRIMARY KEY CHECK (id ~ '^evt_[A-Za-z0-9_]{1,250}$'),
  type         text NOT NULL CHECK (type ~ '^[a-z_]+(\.[a-z_]+)+$'),
  created      timestamptz NOT NULL,
  livemode     boolean NOT NULL,
  object_id    text,
  tenant_id    uuid REFERENCES platform.tenants (id) ON DELETE SET NULL,
  source       text NOT NULL CHECK (source IN ('webhook', 'reconcile')),
  received_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
  processed_at timestamptz,
  outcome      text NOT NULL DEFAULT 'pending'
               CHECK (outcome IN ('pending', 'applied', 'stale', 'ignored', 'unknown_customer'))
);
CREATE INDEX stripe_events_created_idx ON platform.stripe_events (created);
CREATE INDEX stripe_events_tenant_idx ON platform.stripe_events (tenant_id, created);

-- One row per Stripe object an event touched: the row lock that orders re-fetches of one object.
CREATE TABLE platform.stripe_objects (
  id        text PRIMARY KEY CHECK (id ~ '^(sub|in|cus)_[A-Za-z0-9_]{1,250}$'),
  synced_at timestamptz
);

-- Where the reconcile job is: Stripe events created before cursor were replayed.
CREATE TABLE platform.stripe_sync_state (
  name       text PRIMARY KEY CHECK (name = 'events'),
  cursor     timestamptz NOT NULL,
  runs       bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- The invoice mirror: what the tenant's application may show, amounts in the currency's minor unit.
CREATE TABLE platform.invoices (
  stripe_invoice_id      text PRIMARY KEY CHECK (stripe_invoice_id ~ '^in_'),
  tenant_id              uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  stripe_customer_id     text NOT NULL,
  stripe_subscription_id text,
  number                 text,
  status                 text NOT NULL CHECK (status IN ('draft', 'open', 'paid', 'uncollectible', 'void')),
  currency               text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
  amount_due             bigint NOT NULL,
  amount_paid            bigint NOT NULL,
  amount_remaining       bigint NOT NULL,
  total                  bigint,
  attempt_count          integer NOT NULL DEFAULT 0,
  period_start           timestamptz,
  period_end             timestamptz,
  due_date               timestamptz,
  hosted_invoice_url     text,
  invoice_pdf            text,
  lines                  jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(lines) = 'array'),
  created                timestamptz NOT NULL,
  synced_at              timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX invoices_tenant_idx ON platform.invoices (tenant_id, created);

-- A customer's payment state: whether a default payment method exists, its brand and last 4 digits.
-- Never card data.
CREATE TABLE platform.customer_payment_state (
  tenant_id          uuid PRIMARY KEY REFERENCES platform.tenants (id) ON DELETE CASCADE,
  stripe_customer_id text NOT NULL UNIQUE,
  has_payment_method boolean NOT NULL,
  brand              text CHECK (brand ~ '^[a-z_]{1,32}$'),
  last4              text CHECK (last4 ~ '^[0-9]{4}$'),
  delinquent         boolean NOT NULL DEFAULT false,
  synced_at          timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Dunning: a tenant whose payments fail. owns_status: dunning set the tenant's status (it was trial or
-- active), so dunning may set it back; a tenant an operator suspended is never re-activated by a payment
-- unless the policy says so.
CREATE TABLE platform.tenant_dunning (
  tenant_id     uuid PRIMARY KEY REFERENCES platform.tenants (id) ON DELETE CASCADE,
  state         text NOT NULL CHECK (state IN ('past_due', 'suspended')),
  reason        text NOT NULL,
  prior_status  text NOT NULL CHECK (prior_status IN ('trial', 'active', 'past_due', 'suspended', 'canceled')),
  owns_status   boolean NOT NULL,
  since         timestamptz NOT NULL DEFAULT pg_catalog.now(),
  grace_ends_at timestamptz NOT NULL,
  updated_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- Usage pushed to Stripe billing meters: per tenant, metric and closed UTC hour, the overage quantity of that
-- hour, as meter events whose identifier is derived from (tenant, metric, hour, revision). Usage recorded
-- after an hour was pushed goes out as the next revision, for the difference.
CREATE TABLE platform.meter_pushes (
  identifier         text PRIMARY KEY CHECK (pg_catalog.length(identifier) <= 100),
  tenant_id          uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  metric             text NOT NULL,
  hour               timestamptz NOT NULL,
  revision           integer NOT NULL CHECK (revision >= 1),
  quantity           bigint NOT NULL CHECK (quantity > 0),
  stripe_customer_id text NOT NULL,
  stripe_meter_id    text NOT NULL,
  planned_at         timestamptz NOT NULL DEFAULT pg_catalog.now(),
  sent_at            timestamptz,
  UNIQUE (tenant_id, metric, hour, revision)
);
CREATE INDEX meter_pushes_unsent_idx ON platform.meter_pushes (hour) WHERE sent_at IS NULL;
-- the planner reads the overage recorded in its look-back window
CREATE INDEX usage_overages_created_idx ON platform.usage_overages (created_at);

-- The subscription mirror gains its items (price, quantity, period of each), its start (for MRR) and when
-- it was last synced.
ALTER TABLE platform.subscriptions
  ADD COLUMN items      jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(items) = 'array'),
  ADD COLUMN started_at timestamptz,
  ADD COLUMN synced_at  timestamptz;

-- Row-level security: forced; tenants read their own invoices, payment state and dunning.
DO $rls$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['invoices', 'customer_payment_state', 'tenant_dunning', 'stripe_events', 'meter_pushes']
  LOOP
    EXECUTE pg_catalog.format('ALTER TABLE platform.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE pg_catalog.format('ALTER TABLE platform.%I FORCE ROW LEVEL SECURITY', t);
    EXECUTE pg_catalog.format('CREATE POLICY tenant_isolation ON platform.%I USING (tenant_id = platform.current_tenant_id())'
                              ' WITH CHECK (tenant_id = platform.current_tenant_id())', t);
    EXECUTE pg_catalog.format('CREATE POLICY control_plane ON platform.%I TO selfbase_admin USING (true) WITH CHECK (true)', t);
    EXECUTE pg_catalog.format('CREATE POLICY monitoring ON platform.%I FOR SELECT TO selfbase_monitor USING (true)', t);
  END LOOP;
END
$rls$;

-- The billing standing of a tenant from the mirrors: 'suspended' (subscription unpaid, canceled or expired),
-- 'past_due' (subscription past_due, or an open invoice whose payment failed), else 'ok'.
CREATE FUNCTION platform.billing_standing(p_tenant uuid, OUT standing text, OUT reason text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT CASE WHEN s.status IN ('unpaid', 'canceled', 'incomplete_expired') THEN 'suspended'
              WHEN s.status = 'past_due' OR i.stripe_invoice_id IS NOT NULL THEN 'past_due'
              ELSE 'ok' END,
         CASE WHEN s.status IN ('unpaid', 'canceled', 'incomplete_expired', 'past_due')
              THEN 'subscription ' || s.stripe_subscription_id || ' is ' || s.status
              WHEN i.stripe_invoice_id IS NOT NULL THEN 'invoice ' || i.stripe_invoice_id || ' payment failed'
              ELSE 'paid' END
    FROM (SELECT p_tenant AS id) t
    LEFT JOIN platform.subscriptions s ON s.tenant_id = t.id
    LEFT JOIN LATERAL (SELECT v.stripe_invoice_id FROM platform.invoices v
                        WHERE v.tenant_id = t.id AND v.status = 'open' AND v.attempt_count > 0
                          AND v.amount_remaining > 0
                        ORDER BY v.created LIMIT 1) i ON true
$$;

-- Move a tenant's dunning state to what the mirrors say (and the clock, for the grace period).
-- p_policy: {"grace_days": n, "reactivate_suspended": bool}. Returns the tenant's status before and after.
CREATE FUNCTION platform.billing_settle(p_tenant uuid, p_policy jsonb, OUT status_before text, OUT status_after text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_tenant record;
  v_dun record;
  v_want record;
  v_grace pg_catalog.interval;
  v_state pg_catalog.text;
  v_status pg_catalog.text;
BEGIN
  v_grace := pg_catalog.make_interval(days => COALESCE((p_policy ->> 'grace_days')::pg_catalog.int4, 7));
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
    IF v_dun.owns_status OR COALESCE((p_policy ->> 'reactivate_suspended')::pg_catalog.bool, false) THEN
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

-- Take an event: record it in the ledger and lock the object it is about, so that the caller's re-fetch
-- and apply are ordered with other events on that object. false: the event was already taken (a
-- duplicate delivery); the caller applies nothing. The ledger row and the effect commit together.
CREATE FUNCTION platform.stripe_event_begin(p_id text, p_type text, p_created timestamptz, p_livemode boolean,
                                            p_object_id text, p_source text)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_id pg_catalog.text;
BEGIN
  INSERT INTO platform.stripe_events AS e (id, type, created, livemode, object_id, source)
  VALUES (p_id, p_type, p_created, p_livemode, p_object_id, p_source)
  ON CONFLICT (id) DO NOTHING
  RETURNING e.id INTO v_id;
  IF v_id IS NULL THEN
    RETURN false;
  END IF;
  IF p_object_id ~ '^(sub|in|cus)_' THEN
    INSERT INTO platform.stripe_objects (id) VALUES (p_object_id) ON CONFLICT (id) DO NOTHING;
    PERFORM FROM platform.stripe_objects o WHERE o.id = p_object_id FOR UPDATE;
  END IF;
  RETURN true;
END
$$;

-- Apply the current state of the event's object, as re-fetched from Stripe after stripe_event_begin
-- (NULL: nothing to apply), and settle the tenant's dunning. Returns the outcome and the tenant's status.
CREATE FUNCTION platform.stripe_event_apply(p_id text, p_object jsonb, p_policy jsonb)
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
               stripe_price_id = COALESCE((SELECT i #>> '{price,id}'
                                             FROM pg_catalog.jsonb_array_elements(p_object #> '{items,data}') i
                                            WHERE i #>> '{price,recurring,usage_type}' = 'licensed' LIMIT 1),
                                          s.stripe_price_id),
               plan_code = COALESCE((SELECT p.code FROM platform.plans p WHERE p.code = p_object #>> '{metadata,plan_code}'),
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
      UPDATE platform.stripe_objects o SET synced_at = pg_catalog.now() WHERE o.id = p_object ->> 'id';
      SELECT * INTO v_settle FROM platform.billing_settle(v_tenant.id, p_policy);
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

-- The clock's part of dunning: tenants whose grace period ended are suspended. Returns who changed.
CREATE FUNCTION platform.billing_dunning_tick(p_policy jsonb)
RETURNS TABLE (tenant text, status_before text, status_after text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT t.slug, s.status_before, s.status_after
    FROM platform.tenant_dunning d
    JOIN platform.tenants t ON t.id = d.tenant_id
    CROSS JOIN LATERAL platform.billing_settle(d.tenant_id, p_policy) s
   WHERE d.state = 'past_due' AND d.grace_ends_at <= pg_catalog.now()
$$;

-- The reconcile job's cursor: read, and moved forward (never back).
CREATE FUNCTION platform.stripe_sync_cursor(p_advance_to timestamptz DEFAULT NULL)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_cursor pg_catalog.timestamptz;
BEGIN
  IF p_advance_to IS NOT NULL THEN
    INSERT INTO platform.stripe_sync_state AS s (name, cursor, runs) VALUES ('events', p_advance_to, 1)
    ON CONFLICT (name) DO UPDATE SET cursor = GREATEST(s.cursor, EXCLUDED.cursor), runs = s.runs + 1,
                                     updated_at = pg_catalog.now();
  END IF;
  SELECT s.cursor INTO v_cursor FROM platform.stripe_sync_state s WHERE s.name = 'events';
  RETURN v_cursor;
END
$$;

-- Plan the meter events of closed hours (ended p_settle ago, within p_lookback) and return every unsent one,
-- oldest first. Tenants without a Stripe customer, or metrics without a meter, are not planned.
CREATE FUNCTION platform.meter_push_plan(p_settle interval, p_lookback interval)
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
                 pg_catalog.sum(o.quantity)::pg_catalog.int8 AS quantity
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

-- Record that Stripe took these meter events; returns how many were newly marked.
CREATE FUNCTION platform.meter_push_sent(p_identifiers text[])
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  WITH marked AS (
    UPDATE platform.meter_pushes m SET sent_at = pg_catalog.now()
     WHERE m.identifier = ANY (p_identifiers) AND m.sent_at IS NULL RETURNING 1)
  SELECT pg_catalog.count(*)::pg_catalog.int4 FROM marked
$$;

-- Least privilege: applications read their tenant's invoices, payment state and dunning; the ledger is
-- append-only for everyone but its owner.
REVOKE ALL ON platform.stripe_events, platform.stripe_objects, platform.stripe_sync_state, platform.invoices,
  platform.customer_payment_state, platform.tenant_dunning, platform.meter_pushes FROM PUBLIC;
GRANT SELECT ON platform.invoices, platform.customer_payment_state, platform.tenant_dunning TO selfbase_app;
GRANT SELECT ON platform.stripe_events, platform.stripe_sync_state, platform.invoices, platform.customer_payment_state,
  platform.tenant_dunning, platform.meter_pushes TO selfbase_admin;
-- postgres_exporter: the columns of its billing queries, never a Stripe id or an invoice URL
GRANT SELECT (source, outcome, created, received_at, processed_at) ON platform.stripe_events TO selfbase_monitor;
GRANT SELECT (status, attempt_count, amount_remaining) ON platform.invoices TO selfbase_monitor;
GRANT SELECT (state) ON platform.tenant_dunning TO selfbase_monitor;
GRANT SELECT (hour, sent_at) ON platform.meter_pushes TO selfbase_monitor;
REVOKE ALL ON FUNCTION platform.billing_standing(uuid), platform.billing_settle(uuid, jsonb),
  platform.stripe_event_begin(text, text, timestamptz, boolean, text, text),
  platform.stripe_event_apply(text, jsonb, jsonb), platform.billing_dunning_tick(jsonb),
  platform.stripe_sync_cursor(timestamptz), platform.meter_push_plan(interval, interval),
  platform.meter_push_sent(text[]) FROM PUBLIC;
RESET ROLE;
ALTER FUNCTION platform.billing_standing(uuid) OWNER TO selfbase_billing_definer;
ALTER FUNCTION platform.billing_settle(uuid, jsonb) OWNER TO selfbase_billing_definer;
ALTER FUNCTION platform.stripe_event_begin(text, text, timestamptz, boolean, text, text)
  OWNER TO selfbase_billing_definer;
ALTER FUNCTION platform.stripe_event_apply(text, jsonb, jsonb) OWNER TO selfbase_billing_definer;
ALTER FUNCTION platform.billing_dunning_tick(jsonb) OWNER TO selfbase_billing_definer;
ALTER FUNCTION platform.stripe_sync_cursor(timestamptz) OWNER TO selfbase_billing_definer;
ALTER FUNCTION platform.meter_push_plan(interval, interval) OWNER TO selfbase_billing_definer;
ALTER FUNCTION platform.meter_push_sent(text[]) OWNER TO selfbase_billing_definer;
GRANT SELECT, INSERT, UPDATE ON platform.stripe_events, platform.stripe_objects, platform.stripe_sync_state,
  platform.invoices, platform.customer_payment_state TO selfbase_billing_definer;
GRANT SELECT, INSERT, UPDATE, DELETE ON platform.tenant_dunning TO selfbase_billing_definer;
-- LOCK ... SHARE ROW EXCLUSIVE needs one of UPDATE, DELETE, TRUNCATE
GRANT SELECT, INSERT, UPDATE ON platform.meter_pushes TO selfbase_billing_definer;
GRANT SELECT ON platform.usage_overages, platform.usage_events, platform.plan_quotas TO selfbase_billing_definer;
GRANT SELECT, INSERT, UPDATE ON platform.subscriptions TO selfbase_billing_definer;
GRANT SELECT, UPDATE (status, updated_at) ON platform.tenants TO selfbase_billing_definer;
GRANT INSERT ON platform.audit_log TO selfbase_billing_definer;
GRANT EXECUTE ON FUNCTION platform.stripe_event_begin(text, text, timestamptz, boolean, text, text),
  platform.stripe_event_apply(text, jsonb, jsonb), platform.billing_dunning_tick(jsonb),
  platform.stripe_sync_cursor(timestamptz), platform.meter_push_plan(interval, interval),
  platform.meter_push_sent(text[]) TO selfbase_billing;
GRANT EXECUTE ON FUNCTION platform.billing_standing(uuid) TO selfbase_admin, selfbase_monitor;
-- postgres_exporter's MRR: the subscription mirror (no Stripe id but the price's) and the price book
GRANT SELECT (stripe_price_id, status, started_at, trial_end, canceled_at) ON platform.subscriptions TO selfbase_monitor;
GRANT SELECT (currency, billing_cycle, unit_amount, stripe_price_id) ON platform.plan_prices TO selfbase_monitor;
SET LOCAL ROLE selfbase_owner;
CREATE POLICY monitoring ON platform.subscriptions FOR SELECT TO selfbase_monitor USING (true);
RESET ROLE;
"""
