# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0008: each user's chosen tenant, the one their tokens carry. auth reads its claims through Hasura
with no ordering, so a member of two tenants got either; the claim now comes from one row per user, which only
that user switches, and only to a tenant they are a member of."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0008"
NAME = "tenant_choice"
SQL = r"""
-- selfbase platform schema, version 0008: each user's chosen tenant.
DO $roles$
BEGIN
  -- Owns choose_oldest_tenant() and its trigger, which give users their first or next choice. Nobody logs in as it.
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'selfbase_choice_definer') THEN
    CREATE ROLE selfbase_choice_definer NOLOGIN NOBYPASSRLS;
  END IF;
END
$roles$;
GRANT USAGE ON SCHEMA platform TO selfbase_choice_definer;

SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = pg_catalog, platform, pg_temp;

-- The user Hasura's session acts for (x-hasura-user-id), or NULL.
CREATE FUNCTION platform.current_user_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
  SELECT (NULLIF(pg_catalog.current_setting('hasura.user', true), '')::pg_catalog.jsonb
          OPERATOR(pg_catalog.->>) 'x-hasura-user-id')::uuid
$$;

-- One row per user with a membership: the tenant their tokens carry. The foreign key keeps it one of their
-- memberships; when that membership goes, so does the choice, and keep_tenant_choice() picks again.
CREATE TABLE platform.tenant_choices (
  user_id    uuid PRIMARY KEY,
  tenant_id  uuid NOT NULL,
  chosen_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
  FOREIGN KEY (tenant_id, user_id) REFERENCES platform.tenant_members (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX tenant_choices_member_idx ON platform.tenant_choices (tenant_id, user_id);
ALTER TABLE platform.tenant_choices ENABLE ROW LEVEL SECURITY;
ALTER TABLE platform.tenant_choices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON platform.tenant_choices
  USING (tenant_id = platform.current_tenant_id()) WITH CHECK (tenant_id = platform.current_tenant_id());
CREATE POLICY control_plane ON platform.tenant_choices TO selfbase_admin USING (true) WITH CHECK (true);
-- Hasura's claims query (a query: no hasura.user) reads every choice; in a mutation a user reaches only
-- their own, and may move it to any tenant they are a member of (the foreign key).
CREATE POLICY graphql_read ON platform.tenant_choices FOR SELECT TO selfbase_graphql
  USING (NULLIF(pg_catalog.current_setting('hasura.user', true), '') IS NULL);
CREATE POLICY own_choice ON platform.tenant_choices TO selfbase_graphql
  USING (user_id = platform.current_user_id()) WITH CHECK (user_id = platform.current_user_id());
-- tenant_isolation alone would let another member of the chosen tenant touch the row
CREATE POLICY only_own_choice ON platform.tenant_choices AS RESTRICTIVE FOR UPDATE TO selfbase_graphql
  USING (user_id = platform.current_user_id()) WITH CHECK (user_id = platform.current_user_id());
CREATE POLICY choice_definer ON platform.tenant_choices TO selfbase_choice_definer USING (true) WITH CHECK (true);
CREATE POLICY choice_definer ON platform.tenant_members FOR SELECT TO selfbase_choice_definer USING (true);

-- The rule, in one place: each listed user without a choice gets their oldest membership.
CREATE FUNCTION platform.choose_oldest_tenant(p_users uuid[]) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
  INSERT INTO platform.tenant_choices (user_id, tenant_id)
  SELECT DISTINCT ON (m.user_id) m.user_id, m.tenant_id FROM platform.tenant_members m
   WHERE m.user_id = ANY (p_users) ORDER BY m.user_id, m.created_at, m.id
  ON CONFLICT (user_id) DO NOTHING
$$;

-- A user's first membership is their choice until they make one; when the chosen membership is deleted, their
-- oldest remaining one takes its place. Runs after the foreign key's cascade (trigger names sort after "RI_").
CREATE FUNCTION platform.keep_tenant_choice() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, platform, pg_temp AS $$
BEGIN
  PERFORM platform.choose_oldest_tenant(ARRAY[CASE WHEN TG_OP = 'INSERT' THEN NEW.user_id ELSE OLD.user_id END]);
  RETURN NULL;
END
$$;
CREATE TRIGGER keep_tenant_choice AFTER INSERT OR DELETE ON platform.tenant_members
  FOR EACH ROW EXECUTE FUNCTION platform.keep_tenant_choice();

RESET ROLE;

-- Members are added, removed and given roles; nobody else moves them between users or tenants (which would move
-- a choice with them).
REVOKE UPDATE ON platform.tenant_members FROM selfbase_app;
GRANT UPDATE (role) ON platform.tenant_members TO selfbase_app;

REVOKE ALL ON platform.tenant_choices FROM PUBLIC;
REVOKE ALL ON FUNCTION platform.keep_tenant_choice(), platform.choose_oldest_tenant(uuid[]),
  platform.current_user_id() FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON platform.tenant_choices TO selfbase_admin;
GRANT SELECT (user_id, tenant_id, chosen_at), UPDATE (tenant_id) ON platform.tenant_choices TO selfbase_graphql;
GRANT EXECUTE ON FUNCTION platform.current_user_id() TO selfbase_graphql;
GRANT SELECT (id, user_id, tenant_id, created_at) ON platform.tenant_members TO selfbase_choice_definer;
GRANT SELECT, INSERT ON platform.tenant_choices TO selfbase_choice_definer;
GRANT EXECUTE ON FUNCTION platform.current_tenant_id() TO selfbase_choice_definer;
ALTER FUNCTION platform.keep_tenant_choice() OWNER TO selfbase_choice_definer;
ALTER FUNCTION platform.choose_oldest_tenant(uuid[]) OWNER TO selfbase_choice_definer;

-- Users of today: their oldest membership.
SELECT platform.choose_oldest_tenant(ARRAY(SELECT DISTINCT m.user_id FROM platform.tenant_members m));
"""
