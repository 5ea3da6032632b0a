# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0016: operators create tenants (the admin API's POST admin/tenants). A new tenant is pooled (no
placement row), active, with no Stripe customer yet; its creation is audited with the operator's user id, like the
actions of migration 0009, and refused to every other login and session."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0016"
NAME = "operator_create_tenant"
SQL = r"""
-- selfbase platform schema, version 0016: operators create tenants.
SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = pg_catalog, platform, pg_temp;

-- Each field is checked before the insert, and named in the error; a slug that is taken is refused (23505), so a
-- retried request creates nothing twice. selfbase.platform.tenants keeps a tenant it does not list unless its
-- exclusive option is on.
CREATE FUNCTION platform.operator_create_tenant(slug text, name text, plan_code text DEFAULT NULL,
                                                billing_cycle text DEFAULT 'month') RETURNS SETOF platform.tenants
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
DECLARE
  n platform.tenants;
BEGIN
  IF platform.current_operator_id() IS NULL THEN
    RAISE EXCEPTION 'only an operator may do this' USING ERRCODE = '42501',
      HINT = 'the request needs the operator role, for a user listed in platform.operators';
  END IF;
  IF operator_create_tenant.slug IS NULL OR operator_create_tenant.slug !~ '^[a-z0-9][a-z0-9-]{1,62}$' THEN
    RAISE EXCEPTION 'slug: 2 to 63 lowercase letters, digits or dashes, not starting with a dash; got %',
      operator_create_tenant.slug USING ERRCODE = '22023';
  END IF;
  IF operator_create_tenant.name IS NULL OR pg_catalog.btrim(operator_create_tenant.name) = ''
     OR pg_catalog.length(operator_create_tenant.name) > 200 THEN
    RAISE EXCEPTION 'name: must be 1 to 200 characters' USING ERRCODE = '22023';
  END IF;
  -- NULL (a REST call that leaves it out) is the default, month
  IF operator_create_tenant.billing_cycle NOT IN ('month', 'year') THEN
    RAISE EXCEPTION 'billing_cycle: must be month or year, got %', operator_create_tenant.billing_cycle
      USING ERRCODE = '22023';
  END IF;
  IF operator_create_tenant.plan_code IS NOT NULL AND NOT EXISTS (
       SELECT FROM platform.plans p WHERE p.code = operator_create_tenant.plan_code AND p.active) THEN
    RAISE EXCEPTION 'plan_code: no active plan %', operator_create_tenant.plan_code USING ERRCODE = '22023';
  END IF;
  IF EXISTS (SELECT FROM platform.tenants t WHERE t.slug = operator_create_tenant.slug) THEN
    RAISE EXCEPTION 'slug: a tenant % exists', operator_create_tenant.slug USING ERRCODE = '23505';
  END IF;
  INSERT INTO platform.tenants (slug, name, plan_code, billing_cycle)
  VALUES (operator_create_tenant.slug, pg_catalog.btrim(operator_create_tenant.name), operator_create_tenant.plan_code,
          COALESCE(operator_create_tenant.billing_cycle, 'month'))
  RETURNING * INTO n;
  PERFORM platform.operator_audit(n, 'tenant', n.slug, 'create', NULL,
                                  pg_catalog.jsonb_build_object('name', n.name, 'status', n.status,
                                                                'plan_code', n.plan_code,
                                                                'billing_cycle', n.billing_cycle));
  RETURN NEXT n;
END
$$;

-- What the definer inserts, and nothing else.
CREATE POLICY operator_definer_insert ON platform.tenants FOR INSERT TO selfbase_operator_definer WITH CHECK (true);

RESET ROLE;

REVOKE ALL ON FUNCTION platform.operator_create_tenant(text, text, text, text) FROM PUBLIC;
GRANT INSERT (slug, name, plan_code, billing_cycle) ON platform.tenants TO selfbase_operator_definer;
ALTER FUNCTION platform.operator_create_tenant(text, text, text, text) OWNER TO selfbase_operator_definer;
-- Hasura's login calls it, as a mutation for the operator role.
GRANT EXECUTE ON FUNCTION platform.operator_create_tenant(text, text, text, text) TO selfbase_graphql;
"""
