# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0011: quota status through GraphQL. platform.quota_status(tenant) answers only for the session's own
tenant, the control plane and the monitor, so Hasura's login got nothing in a query: operators could not see who is
near or over a quota. platform.tenant_quota_status is a view of every tenant's status, read by Hasura's login alone,
whose permissions give operators every row and users their own tenant's."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0011"
NAME = "quota_status"
SQL = r"""
-- selfbase platform schema, version 0011: quota status for Hasura.
DO $roles$
BEGIN
  -- Owns the function behind the view and reads what monitoring reads (every tenant's usage and quotas, no
  -- people, ids or settings). Nobody logs in as it.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'selfbase_quota_reader') THEN
    CREATE ROLE selfbase_quota_reader NOLOGIN NOBYPASSRLS;
  END IF;
END
$roles$;
GRANT selfbase_monitor TO selfbase_quota_reader;
GRANT USAGE ON SCHEMA platform TO selfbase_quota_reader;

SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = pg_catalog, platform, pg_temp;

-- Every tenant's quota status, as quota_status() gives it, in a GraphQL query (no hasura.user: Hasura's select
-- permissions filter the rows, as for every table it reads). In a mutation, where hasura.user is set, only the
-- session's tenant: the wall that tenant_isolation is for tables.
CREATE FUNCTION platform.graphql_quota_status()
RETURNS TABLE (tenant_id uuid, metric text, used bigint, limit_value bigint, percent numeric, status text,
               mode text, period text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT t.id, s.metric, s.used, s.limit_value, s.percent, s.status, s.mode, s.period
    FROM platform.tenants t CROSS JOIN LATERAL platform.quota_status(t.id) s
   WHERE NULLIF(pg_catalog.current_setting('hasura.user', true), '') IS NULL
      OR t.id = platform.current_tenant_id()
$$;

CREATE VIEW platform.tenant_quota_status WITH (security_barrier) AS
  SELECT tenant_id, metric, used, limit_value, percent, status, mode, period FROM platform.graphql_quota_status();
COMMENT ON VIEW platform.tenant_quota_status IS
  'Each tenant''s quotas with their usage in the current period: ok, warning (80%) or exceeded. Hasura reads it.';

RESET ROLE;

REVOKE ALL ON FUNCTION platform.graphql_quota_status() FROM PUBLIC;
ALTER FUNCTION platform.graphql_quota_status() OWNER TO selfbase_quota_reader;
REVOKE ALL ON platform.tenant_quota_status FROM PUBLIC;
-- A view's functions are called with the reader's EXECUTE privilege.
GRANT EXECUTE ON FUNCTION platform.graphql_quota_status() TO selfbase_graphql;
GRANT SELECT ON platform.tenant_quota_status TO selfbase_graphql;
"""
