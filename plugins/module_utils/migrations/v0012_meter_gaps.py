# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0012: meter events past Stripe's 24-hour window. Stripe keeps a meter event's identifier (and the
request's idempotency key) for 24 hours only, and the push ledger re-plans an unmarked push for days: one that
Stripe took but that was never marked could be sent again and counted twice. The ledger now records when a push
was first sent; the billing service resends one first sent more than 23 hours before only after Stripe's meter
event summary shows that it was not counted. platform.meter_push_plan also gives what is marked sent for the same
customer, meter and hour, which that summary is compared with.

Also overage that is never billed: usage above a quota in overage mode of a tenant without a Stripe customer, or of
a metric whose quota has no meter, is never planned. platform.unbilled_overage() reports it, for monitoring and
billing_info.

And Stripe's meter error reports: with the v2 meter event stream, a meter event that Stripe refuses is visible only
in them (v2 events v1.billing.meter.error_report_triggered and v1.billing.meter.no_meter_found). The billing service
records each in platform.meter_error_reports, and marks the pushes it names.

And the reconcile's gap: Stripe lists 30 days of events, so a sync that did not run for longer cannot recover what
happened in between. The billing service records the newest such gap; monitoring alerts on it for 7 days."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0012"
NAME = "meter_gaps"
SQL = r"""
-- selfbase platform schema, version 0012: meter events past Stripe's 24-hour identifier window, and overage that
-- is never billed.
-- When a push was first sent (or, after a check that Stripe did not count it, sent again); pushes planned
-- before this migration and not marked may have been sent when they were planned.
ALTER TABLE platform.meter_pushes ADD COLUMN attempted_at timestamptz;
UPDATE platform.meter_pushes SET attempted_at = planned_at WHERE sent_at IS NULL;

-- Stripe's meter error reports, per event and error code: how many meter events it refused and a sample of their
-- identifiers; the pushes named in a sample carry the code.
ALTER TABLE platform.meter_pushes ADD COLUMN refused_code text;
SET LOCAL ROLE selfbase_owner;
CREATE TABLE platform.meter_error_reports (
  stripe_event_id    text NOT NULL CHECK (pg_catalog.length(stripe_event_id) <= 255),
  code               text NOT NULL CHECK (pg_catalog.length(code) <= 100),
  event_type         text NOT NULL CHECK (event_type IN ('v1.billing.meter.error_report_triggered',
                                                         'v1.billing.meter.no_meter_found')),
  stripe_meter_id    text,
  error_count        integer NOT NULL CHECK (error_count >= 0),
  sample_identifiers text[] NOT NULL DEFAULT '{}',
  message            text,
  created            timestamptz NOT NULL,
  validation_start   timestamptz,
  validation_end     timestamptz,
  received_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
  PRIMARY KEY (stripe_event_id, code)
);
CREATE INDEX meter_error_reports_created_idx ON platform.meter_error_reports (created);
RESET ROLE;

-- The newest stretch of Stripe events the reconcile could no longer list (its cursor was older than 30 days).
ALTER TABLE platform.stripe_sync_state ADD COLUMN gap_from timestamptz, ADD COLUMN gap_to timestamptz,
  ADD COLUMN gap_found_at timestamptz, ADD CONSTRAINT stripe_sync_state_gap_check CHECK (gap_from <= gap_to);

DROP FUNCTION platform.meter_push_plan(interval, interval);
CREATE FUNCTION platform.meter_push_plan(p_settle interval, p_lookback interval)
RETURNS TABLE (identifier text, tenant text, metric text, hour timestamptz, quantity bigint,
               stripe_customer_id text, stripe_meter_id text, attempted_at timestamptz, counted bigint)
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
  -- counted: what is marked sent for the same customer, meter and hour, the part of Stripe's summary of that
  -- hour that the platform knows of
  RETURN QUERY
    SELECT m.identifier, t.slug, m.metric, m.hour, m.quantity, m.stripe_customer_id, m.stripe_meter_id,
           m.attempted_at,
           (SELECT COALESCE(pg_catalog.sum(s.quantity), 0)::pg_catalog.int8 FROM platform.meter_pushes s
             WHERE s.stripe_customer_id = m.stripe_customer_id AND s.stripe_meter_id = m.stripe_meter_id
               AND s.hour = m.hour AND s.sent_at IS NOT NULL)
      FROM platform.meter_pushes m JOIN platform.tenants t ON t.id = m.tenant_id
     WHERE m.sent_at IS NULL ORDER BY m.hour, m.identifier;
END
$$;

-- Record that these pushes are about to be sent: the first send starts Stripe's 24-hour window, and so does a
-- resend of one first sent more than 23 hours before (the caller has checked that Stripe did not count it).
-- Returns how many were recorded.
CREATE FUNCTION platform.meter_push_attempt(p_identifiers text[])
RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  WITH tried AS (
    UPDATE platform.meter_pushes m SET attempted_at = pg_catalog.now()
     WHERE m.identifier = ANY (p_identifiers) AND m.sent_at IS NULL
       AND (m.attempted_at IS NULL OR m.attempted_at < pg_catalog.now() - '23 hours'::pg_catalog.interval)
    RETURNING 1)
  SELECT pg_catalog.count(*)::pg_catalog.int4 FROM tried
$$;

-- Overage of closed hours within Stripe's 35 days that the planner never takes: the tenant has no Stripe customer
-- (no_customer), or its plan's quota of the metric has no meter (no_meter). Per tenant and metric: how much, and
-- when the oldest of it happened.
CREATE FUNCTION platform.unbilled_overage()
RETURNS TABLE (tenant_id uuid, tenant text, metric text, reason text, quantity bigint, since timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT t.id, t.slug, o.metric,
         CASE WHEN t.stripe_customer_id IS NULL THEN 'no_customer' ELSE 'no_meter' END,
         LEAST(pg_catalog.sum(o.quantity), 9223372036854775807)::pg_catalog.int8, pg_catalog.min(e.occurred_at)
    FROM platform.usage_overages o
    JOIN platform.usage_events e ON e.id = o.usage_event_id
    JOIN platform.tenants t ON t.id = o.tenant_id
    LEFT JOIN platform.plan_quotas q ON q.plan_code = t.plan_code AND q.metric = o.metric
   -- an overage is recorded at most 5 minutes before its event occurred (meter_record's limit)
   WHERE o.created_at >= pg_catalog.now() - '35 days 5 minutes'::pg_catalog.interval
     AND e.occurred_at >= pg_catalog.now() - '35 days'::pg_catalog.interval
     AND e.occurred_at < pg_catalog.date_bin('1 hour', pg_catalog.now(), 'epoch')
     AND (t.stripe_customer_id IS NULL OR q.stripe_meter_id IS NULL)
   GROUP BY 1, 2, 3, 4
$$;

-- Record one meter error report, a v2 event as Stripe lists it; taken once (a repeat records nothing). Returns
-- how many error codes were new.
CREATE FUNCTION platform.meter_error_record(p_event jsonb)
RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_n integer;
BEGIN
  IF pg_catalog.jsonb_typeof(p_event) IS DISTINCT FROM 'object'
     OR p_event->>'type' NOT IN ('v1.billing.meter.error_report_triggered', 'v1.billing.meter.no_meter_found')
     OR p_event->>'id' IS NULL OR p_event->>'created' IS NULL
     OR pg_catalog.jsonb_typeof(p_event #> '{data,reason,error_types}') IS DISTINCT FROM 'array' THEN
    RAISE EXCEPTION 'meter_error_record: not a meter error report (id, type, created, data.reason.error_types)'
      USING ERRCODE = '22023';
  END IF;
  INSERT INTO platform.meter_error_reports (stripe_event_id, code, event_type, stripe_meter_id, error_count,
                                            sample_identifiers, message, created, validation_start, validation_end)
  SELECT p_event->>'id', t->>'code', p_event->>'type', p_event #>> '{related_object,id}',
         (t->>'error_count')::pg_catalog.int4,
         ARRAY(SELECT e #>> '{request,identifier}'
                 FROM pg_catalog.jsonb_array_elements(COALESCE(t->'sample_errors', '[]')) e
                WHERE e #>> '{request,identifier}' IS NOT NULL),
         (SELECT e->>'error_message' FROM pg_catalog.jsonb_array_elements(COALESCE(t->'sample_errors', '[]')) e
           LIMIT 1),
         (p_event->>'created')::pg_catalog.timestamptz,
         (p_event #>> '{data,validation_start}')::pg_catalog.timestamptz,
         (p_event #>> '{data,validation_end}')::pg_catalog.timestamptz
    FROM pg_catalog.jsonb_array_elements(p_event #> '{data,reason,error_types}') t
  ON CONFLICT DO NOTHING;
  GET DIAGNOSTICS v_n = ROW_COUNT;
  UPDATE platform.meter_pushes m SET refused_code = r.code
    FROM platform.meter_error_reports r
   WHERE r.stripe_event_id = p_event->>'id' AND m.identifier = ANY (r.sample_identifiers)
     AND m.refused_code IS DISTINCT FROM r.code;
  RETURN v_n;
END
$$;

-- The newest report recorded: where the next read of Stripe's list starts.
CREATE FUNCTION platform.meter_error_cursor()
RETURNS timestamptz
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT pg_catalog.max(r.created) FROM platform.meter_error_reports r
$$;

-- Record that the events from p_from to p_to are lost to the reconcile: from its cursor (which must be older than
-- Stripe's 30 days) to the oldest event Stripe still lists. Returns the gap's length in seconds.
CREATE FUNCTION platform.stripe_sync_gap(p_to timestamptz)
RETURNS double precision
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  v_from pg_catalog.timestamptz;
BEGIN
  SELECT s.cursor INTO v_from FROM platform.stripe_sync_state s WHERE s.name = 'events' FOR UPDATE;
  IF v_from IS NULL OR p_to IS NULL OR p_to <= v_from OR p_to > pg_catalog.now() - '29 days'::pg_catalog.interval THEN
    RAISE EXCEPTION 'stripe_sync_gap: no gap: the cursor is % and Stripe lists events from %', v_from, p_to
      USING ERRCODE = '22023';
  END IF;
  UPDATE platform.stripe_sync_state SET gap_from = v_from, gap_to = p_to, gap_found_at = pg_catalog.now()
   WHERE name = 'events';
  RETURN pg_catalog.date_part('epoch', p_to - v_from);
END
$$;

REVOKE ALL ON FUNCTION platform.stripe_sync_gap(timestamptz) FROM PUBLIC;
ALTER FUNCTION platform.stripe_sync_gap(timestamptz) OWNER TO selfbase_billing_definer;
GRANT EXECUTE ON FUNCTION platform.stripe_sync_gap(timestamptz) TO selfbase_billing;
GRANT SELECT (gap_from, gap_to, gap_found_at) ON platform.stripe_sync_state TO selfbase_monitor;

REVOKE ALL ON platform.meter_error_reports FROM PUBLIC;
REVOKE ALL ON FUNCTION platform.meter_push_plan(interval, interval), platform.meter_push_attempt(text[]),
  platform.unbilled_overage(), platform.meter_error_record(jsonb), platform.meter_error_cursor() FROM PUBLIC;
ALTER FUNCTION platform.meter_error_record(jsonb) OWNER TO selfbase_billing_definer;
ALTER FUNCTION platform.meter_error_cursor() OWNER TO selfbase_billing_definer;
GRANT SELECT, INSERT ON platform.meter_error_reports TO selfbase_billing_definer;
GRANT EXECUTE ON FUNCTION platform.meter_error_record(jsonb), platform.meter_error_cursor() TO selfbase_billing;
GRANT SELECT ON platform.meter_error_reports TO selfbase_admin;
-- postgres_exporter: counts and codes, no Stripe id
GRANT SELECT (code, error_count, created) ON platform.meter_error_reports TO selfbase_monitor;
ALTER FUNCTION platform.meter_push_plan(interval, interval) OWNER TO selfbase_billing_definer;
ALTER FUNCTION platform.meter_push_attempt(text[]) OWNER TO selfbase_billing_definer;
ALTER FUNCTION platform.unbilled_overage() OWNER TO selfbase_billing_definer;
-- the control plane (billing_info) and postgres_exporter: tenant slugs, metrics and quantities, no Stripe id
GRANT EXECUTE ON FUNCTION platform.unbilled_overage() TO selfbase_admin, selfbase_monitor;
GRANT EXECUTE ON FUNCTION platform.meter_push_plan(interval, interval), platform.meter_push_attempt(text[])
  TO selfbase_billing;
-- postgres_exporter: pushes whose window passed unmarked wait for that check
GRANT SELECT (attempted_at) ON platform.meter_pushes TO selfbase_monitor;
"""
