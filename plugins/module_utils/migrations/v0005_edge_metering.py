# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0005: edge metering. The metering agents' login group can record served usage and read the
enforcement set, each through one function; the log position of each agent moves in the same transaction
as the usage it produced."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0005"
NAME = "edge_metering"
SQL = r"""
-- selfbase platform schema, version 0005: edge metering.
DO $roles$
BEGIN
  -- The agents' logins are members of selfbase_meter: EXECUTE on two functions, nothing else.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'selfbase_meter') THEN
    CREATE ROLE selfbase_meter NOLOGIN NOBYPASSRLS;
  END IF;
  -- Owns those functions: sees every tenant through the control_plane policies. Nobody logs in
  -- as it or is a member of it.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'selfbase_meter_definer') THEN
    CREATE ROLE selfbase_meter_definer NOLOGIN NOBYPASSRLS;
  END IF;
END
$roles$;
GRANT selfbase_admin TO selfbase_meter_definer;
GRANT USAGE ON SCHEMA platform TO selfbase_meter;

SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = pg_catalog, platform, pg_temp;

-- Where each agent (its login, session_user) is in its log: the file's identity and the byte
-- offset just after the last line whose usage was recorded.
CREATE TABLE platform.meter_positions (
  source      text PRIMARY KEY,
  file_id     text NOT NULL CHECK (file_id ~ '^[0-9a-f]{1,64}$'),
  file_offset bigint NOT NULL CHECK (file_offset >= 0),
  batches     bigint NOT NULL DEFAULT 0,
  updated_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
REVOKE ALL ON platform.meter_positions FROM PUBLIC;
GRANT SELECT ON platform.meter_positions TO selfbase_admin, selfbase_monitor;

-- The position of the calling agent (NULL, NULL before its first batch).
CREATE FUNCTION platform.meter_position(OUT file_id text, OUT file_offset bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT p.file_id, p.file_offset FROM platform.meter_positions p WHERE p.source = pg_catalog.session_user()
$$;

-- Record served usage and move the caller's position, in one transaction.
-- p_from_file/p_from_offset: where the agent believes it is (NULLs before its first batch); the
-- call fails with SB003 when the stored position differs, so that a replayed or concurrent batch
-- records nothing. p_usage: [{"tenant": slug, "metric": m, "minute": epoch seconds, "quantity": n}].
-- Served requests are recorded even past a hard limit (the edge blocks, the meter counts what was
-- served); overage-mode excess goes to usage_overages. Unknown or deleted tenants are skipped and
-- counted in the result.
CREATE FUNCTION platform.meter_record(p_from_file text, p_from_offset bigint, p_to_file text, p_to_offset bigint,
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
       OR u.quantity < 1 OR u.minute IS NULL OR u.minute % 60 <> 0
       OR pg_catalog.to_timestamp(u.minute) > pg_catalog.now() + '5 minutes'::pg_catalog.interval THEN
      RAISE EXCEPTION 'meter_record: bad usage entry %', pg_catalog.row_to_json(u) USING ERRCODE = '22023';
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
      v_over := LEAST(u.quantity, v_used - q.limit_value);
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

-- What the edge enforces: tenants in a billing state (past_due, suspended) and tenants whose
-- api_requests quota is soft, or used at p_warn_percent or more. reset_at ends the period.
CREATE FUNCTION platform.edge_enforcement(p_warn_percent integer DEFAULT 80)
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
          AND (q.mode = 'soft' OR q.used >= q.limit_value OR q.used * 100 >= q.limit_value * p_warn_percent))
   ORDER BY t.slug
$$;

REVOKE ALL ON FUNCTION platform.meter_position(), platform.meter_record(text, bigint, text, bigint, jsonb),
  platform.edge_enforcement(integer) FROM PUBLIC;
RESET ROLE;
ALTER FUNCTION platform.meter_position() OWNER TO selfbase_meter_definer;
ALTER FUNCTION platform.meter_record(text, bigint, text, bigint, jsonb) OWNER TO selfbase_meter_definer;
ALTER FUNCTION platform.edge_enforcement(integer) OWNER TO selfbase_meter_definer;
GRANT SELECT, INSERT, UPDATE ON platform.meter_positions TO selfbase_meter_definer;
GRANT EXECUTE ON FUNCTION platform.meter_position(), platform.meter_record(text, bigint, text, bigint, jsonb),
  platform.edge_enforcement(integer) TO selfbase_meter;
"""
