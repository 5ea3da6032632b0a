# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0018: a tenant's features follow its Stripe entitlements.

billing_plan keeps each plan's features as Stripe Entitlements features on the plan's product; Stripe keeps each
customer's active entitlements from its subscriptions and says so with
entitlements.active_entitlement_summary.updated. The receiver re-fetches the customer's active entitlements and
stripe_event_apply stores their lookup keys in platform.tenant_entitlements (written by the billing definer alone,
audited when they change). A tenant's features are its plan's until Stripe has listed its entitlements, then
those: every feature the plan declares is off unless entitled, and an entitled lookup key name.level gives the
feature that level. The application reads its own tenant's (platform.my_features(), platform.has_feature(name)),
Hasura reads them through the view platform.tenant_active_features; all through definer functions owned by
selfbase_features_reader, which reads tenants' plans, plans' features and the entitlements and nothing else."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.selfbase.platform.plugins.module_utils.migrations import v0017_self_serve_plans as _v0017

VERSION = "0018"
NAME = "entitlements"

SUMMARY = "entitlements.active_entitlement_summary"
_EDITS = [
    ("  v_plan_cycle pg_catalog.text;\n",
     "  v_plan_cycle pg_catalog.text;\n"
     "  v_keys pg_catalog.text[];\n"),
    ("IF p_object IS NOT NULL AND v_kind IN ('subscription', 'invoice', 'customer') THEN",
     "IF p_object IS NOT NULL AND v_kind IN ('subscription', 'invoice', 'customer', '%s') THEN" % SUMMARY),
    ("      ELSE\n        v_pm := CASE",
     "      ELSIF v_kind = '%s' THEN\n"
     "        -- the customer's active entitlements as Stripe lists them now (the receiver re-fetched them)\n"
     "        v_keys := ARRAY(SELECT DISTINCT e ->> 'lookup_key'\n"
     "                          FROM pg_catalog.jsonb_array_elements(\n"
     "                                 CASE WHEN pg_catalog.jsonb_typeof(p_object #> '{entitlements,data}') = 'array'\n"
     "                                      THEN p_object #> '{entitlements,data}' ELSE '[]' END) e\n"
     "                         WHERE pg_catalog.length(e ->> 'lookup_key') BETWEEN 1 AND 80\n"
     "                         ORDER BY 1 LIMIT 100);\n"
     "        INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action, before, after)\n"
     "        SELECT v_tenant.id, 'tenant_entitlements', v_tenant.slug,\n"
     "               CASE WHEN x.tenant_id IS NULL THEN 'create' ELSE 'update' END,\n"
     "               CASE WHEN x.tenant_id IS NOT NULL THEN pg_catalog.to_jsonb(x.lookup_keys) END,\n"
     "               pg_catalog.to_jsonb(v_keys)\n"
     "          FROM (SELECT 1) one\n"
     "          LEFT JOIN platform.tenant_entitlements x ON x.tenant_id = v_tenant.id\n"
     "         WHERE x.lookup_keys IS DISTINCT FROM v_keys;\n"
     "        INSERT INTO platform.tenant_entitlements AS x (tenant_id, lookup_keys, synced_at)\n"
     "        VALUES (v_tenant.id, v_keys, pg_catalog.now())\n"
     "        ON CONFLICT (tenant_id) DO UPDATE SET lookup_keys = EXCLUDED.lookup_keys, synced_at = EXCLUDED.synced_at;\n"
     "      ELSE\n        v_pm := CASE" % SUMMARY),
]


def _event_apply():
    body = _v0017._event_apply()
    for old, new in _EDITS:
        if body.count(old) != 1:
            raise ValueError('migration 0018: the anchor %r in stripe_event_apply moved' % old)
        body = body.replace(old, new)
    return body


SQL = r"""
-- selfbase platform schema, version 0018: a tenant's features follow its Stripe entitlements.
DO $roles$
BEGIN
  -- Owns the functions that answer a tenant's features. Nobody logs in as it.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'selfbase_features_reader') THEN
    CREATE ROLE selfbase_features_reader NOLOGIN NOBYPASSRLS;
  END IF;
END
$roles$;
GRANT USAGE ON SCHEMA platform TO selfbase_features_reader;

SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = pg_catalog, platform, pg_temp;

-- The lookup keys of each tenant's active Stripe entitlements, as the receiver last fetched them.
CREATE TABLE platform.tenant_entitlements (
  tenant_id   uuid PRIMARY KEY REFERENCES platform.tenants (id) ON DELETE CASCADE,
  lookup_keys text[] NOT NULL CHECK (pg_catalog.cardinality(lookup_keys) <= 100),
  synced_at   timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE platform.tenant_entitlements ENABLE ROW LEVEL SECURITY;
ALTER TABLE platform.tenant_entitlements FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON platform.tenant_entitlements FOR SELECT
  USING (tenant_id = platform.current_tenant_id());
CREATE POLICY control_plane ON platform.tenant_entitlements FOR SELECT TO selfbase_admin USING (true);
CREATE POLICY graphql_read ON platform.tenant_entitlements FOR SELECT TO selfbase_graphql
  USING (NULLIF(current_setting('hasura.user', true), '') IS NULL);
CREATE POLICY billing_definer ON platform.tenant_entitlements TO selfbase_billing_definer
  USING (true) WITH CHECK (true);
CREATE POLICY features_reader ON platform.tenant_entitlements FOR SELECT TO selfbase_features_reader USING (true);
CREATE POLICY features_reader ON platform.tenants FOR SELECT TO selfbase_features_reader USING (true);

-- A tenant's features: its plan's until Stripe has listed its entitlements; then every feature the plan declares
-- is off unless entitled, and an entitled lookup key gives its feature (name) or its level (name.level).
CREATE FUNCTION platform.features_of(p_tenant uuid) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT CASE WHEN e.tenant_id IS NULL THEN COALESCE(p.features, '{}')
              ELSE COALESCE((SELECT pg_catalog.jsonb_object_agg(k, false)
                               FROM pg_catalog.jsonb_object_keys(COALESCE(p.features, '{}')) k), '{}')
                   || COALESCE((SELECT pg_catalog.jsonb_object_agg(
                                         pg_catalog.split_part(l, '.', 1),
                                         CASE WHEN pg_catalog.strpos(l, '.') > 0
                                              THEN pg_catalog.to_jsonb(pg_catalog.substr(l, pg_catalog.strpos(l, '.') + 1))
                                              ELSE 'true'::pg_catalog.jsonb END ORDER BY l)
                                  FROM pg_catalog.unnest(e.lookup_keys) l), '{}') END
    FROM platform.tenants t
    LEFT JOIN platform.plans p ON p.code = t.plan_code
    LEFT JOIN platform.tenant_entitlements e ON e.tenant_id = t.id
   WHERE t.id = p_tenant
$$;

-- The session's own tenant's features (null without one), and whether one of them is on (at any level).
CREATE FUNCTION platform.my_features() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT platform.features_of(platform.current_tenant_id())
$$;
CREATE FUNCTION platform.has_feature(p_feature text) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT COALESCE(platform.features_of(platform.current_tenant_id()) -> p_feature
                    NOT IN ('false'::pg_catalog.jsonb, 'null'::pg_catalog.jsonb), false)
$$;

-- Every tenant's features for a GraphQL query (Hasura's permissions filter the rows, as for its tables); in a
-- mutation, where hasura.user is set, only the session's tenant.
CREATE FUNCTION platform.graphql_tenant_features() RETURNS TABLE (tenant_id uuid, features jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  SELECT t.id, platform.features_of(t.id) FROM platform.tenants t
   WHERE NULLIF(pg_catalog.current_setting('hasura.user', true), '') IS NULL
      OR t.id = platform.current_tenant_id()
$$;
CREATE VIEW platform.tenant_active_features WITH (security_barrier) AS
  SELECT tenant_id, features FROM platform.graphql_tenant_features();
COMMENT ON VIEW platform.tenant_active_features IS
  'Each tenant''s features: its plan''s, then its active Stripe entitlements once listed. Hasura reads it.';

RESET ROLE;

REVOKE ALL ON platform.tenant_entitlements, platform.tenant_active_features FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE (lookup_keys, synced_at) ON platform.tenant_entitlements TO selfbase_billing_definer;
GRANT SELECT ON platform.tenant_entitlements TO selfbase_admin, selfbase_features_reader;
GRANT SELECT (tenant_id, lookup_keys, synced_at) ON platform.tenant_entitlements TO selfbase_app, selfbase_graphql;
GRANT SELECT (id, plan_code) ON platform.tenants TO selfbase_features_reader;
GRANT SELECT (code, features) ON platform.plans TO selfbase_features_reader;
GRANT EXECUTE ON FUNCTION platform.current_tenant_id() TO selfbase_features_reader;
REVOKE ALL ON FUNCTION platform.features_of(uuid), platform.my_features(), platform.has_feature(text),
  platform.graphql_tenant_features() FROM PUBLIC;
ALTER FUNCTION platform.features_of(uuid) OWNER TO selfbase_features_reader;
ALTER FUNCTION platform.my_features() OWNER TO selfbase_features_reader;
ALTER FUNCTION platform.has_feature(text) OWNER TO selfbase_features_reader;
ALTER FUNCTION platform.graphql_tenant_features() OWNER TO selfbase_features_reader;
GRANT EXECUTE ON FUNCTION platform.my_features(), platform.has_feature(text) TO selfbase_app, selfbase_graphql;
GRANT EXECUTE ON FUNCTION platform.features_of(uuid) TO selfbase_admin;
-- A view's functions are called with the reader's EXECUTE privilege.
GRANT EXECUTE ON FUNCTION platform.graphql_tenant_features() TO selfbase_graphql;
GRANT SELECT ON platform.tenant_active_features TO selfbase_graphql;

-- The billing definer records a tenant's entitlements (stripe_event_apply, below) and audits the change.
""" + _event_apply()
