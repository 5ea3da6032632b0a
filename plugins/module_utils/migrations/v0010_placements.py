# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0010: the placement registry. The clusters that hold tenant databases (the database and dedicated
tiers), where each tenant's rows live, and a version that changes with every change of either, which routing
caches compare. Only the control plane writes them; the monitor reads them for capacity."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0010"
NAME = "placements"
SQL = r"""
-- selfbase platform schema, version 0010: clusters and tenant placements.
SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = pg_catalog, platform, pg_temp;

-- A PostgreSQL server (or Patroni cluster) that holds tenant databases, and how the control plane reaches it.
-- Its password is never stored: it comes from the inventory (or libpq's .pgpass) at run time.
CREATE TABLE platform.clusters (
  name          text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
  tier          text NOT NULL CHECK (tier IN ('database', 'dedicated')),
  host          text NOT NULL CHECK (pg_catalog.length(host) BETWEEN 1 AND 1000),
  port          integer NOT NULL DEFAULT 5432 CHECK (port BETWEEN 1 AND 65535),
  admin_user    text NOT NULL DEFAULT 'postgres' CHECK (pg_catalog.length(admin_user) BETWEEN 1 AND 63),
  admin_db      text NOT NULL DEFAULT 'postgres' CHECK (pg_catalog.length(admin_db) BETWEEN 1 AND 63),
  max_databases integer NOT NULL CHECK (max_databases BETWEEN 1 AND 10000),
  -- a cluster whose tenant databases hold this much is not chosen for new ones (NULL: no limit)
  storage_max_bytes bigint CHECK (storage_max_bytes > 0),
  status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'draining')),
  created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
  updated_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
  UNIQUE (name, tier)
);

-- Where a tenant's rows live. No row: pooled, the default. A row keeps its database until the control plane drops
-- it, so a retired placement still takes one of its cluster's databases.
CREATE TABLE platform.tenant_placements (
  tenant_id  uuid PRIMARY KEY REFERENCES platform.tenants (id) ON DELETE RESTRICT,
  tier       text NOT NULL CHECK (tier IN ('pooled', 'database', 'dedicated')),
  cluster    text,
  database   text CHECK (database ~ '^[a-z_][a-z0-9_]{0,62}$'),
  login      text CHECK (login ~ '^[a-z_][a-z0-9_]{0,62}$'),
  state      text NOT NULL CHECK (state IN ('provisioning', 'active', 'moving', 'retired')),
  -- the migration files applied to the database, in order: [{name, sha256}]
  migrations jsonb NOT NULL DEFAULT '[]' CHECK (pg_catalog.jsonb_typeof(migrations) = 'array'),
  version    bigint NOT NULL DEFAULT 0,
  placed_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
  updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  -- a tenant database lives on a cluster of its own tier; pooled rows have neither
  FOREIGN KEY (cluster, tier) REFERENCES platform.clusters (name, tier) ON UPDATE RESTRICT ON DELETE RESTRICT,
  CHECK ((tier = 'pooled') = (cluster IS NULL) AND (cluster IS NULL) = (database IS NULL)
         AND (database IS NULL) = (login IS NULL)),
  UNIQUE (cluster, database)
);
CREATE INDEX ON platform.tenant_placements (cluster);

-- One row: the registry's version, which every change of a cluster or a placement moves on (in the same
-- transaction, so a reader that sees the new version sees the new rows).
CREATE TABLE platform.placement_version (
  one        boolean PRIMARY KEY DEFAULT true CHECK (one),
  version    bigint NOT NULL DEFAULT 0,
  changed_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
INSERT INTO platform.placement_version DEFAULT VALUES;

CREATE FUNCTION platform.bump_placement_version() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  v bigint;
BEGIN
  UPDATE platform.placement_version SET version = version OPERATOR(pg_catalog.+) 1, changed_at = pg_catalog.now()
   RETURNING version INTO v;
  IF TG_OP = 'DELETE' THEN
    RETURN OLD;
  END IF;
  IF TG_TABLE_NAME = 'tenant_placements' THEN
    NEW.version := v;
  END IF;
  NEW.updated_at := pg_catalog.now();
  RETURN NEW;
END
$$;
CREATE TRIGGER bump_version BEFORE INSERT OR UPDATE OR DELETE ON platform.tenant_placements
  FOR EACH ROW EXECUTE FUNCTION platform.bump_placement_version();
CREATE TRIGGER bump_version BEFORE INSERT OR UPDATE OR DELETE ON platform.clusters
  FOR EACH ROW EXECUTE FUNCTION platform.bump_placement_version();

DO $rls$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY['clusters', 'tenant_placements', 'placement_version'] LOOP
    EXECUTE pg_catalog.format('ALTER TABLE platform.%I ENABLE ROW LEVEL SECURITY', t);
    EXECUTE pg_catalog.format('ALTER TABLE platform.%I FORCE ROW LEVEL SECURITY', t);
    EXECUTE pg_catalog.format('CREATE POLICY control_plane ON platform.%I TO selfbase_admin '
                              'USING (true) WITH CHECK (true)', t);
    EXECUTE pg_catalog.format('CREATE POLICY monitor_read ON platform.%I FOR SELECT TO selfbase_monitor USING (true)',
                              t);
  END LOOP;
END
$rls$;
-- the wall every tenant table has (no other role holds a privilege on it today)
CREATE POLICY tenant_isolation ON platform.tenant_placements
  USING (tenant_id = platform.current_tenant_id()) WITH CHECK (tenant_id = platform.current_tenant_id());

RESET ROLE;

-- selfbase.platform.tenant_cluster and tenant_placement serialise their runs on these rows.
INSERT INTO platform.control_locks (name) VALUES ('tenant_cluster'), ('tenant_placement');

REVOKE ALL ON platform.clusters, platform.tenant_placements, platform.placement_version FROM PUBLIC;
REVOKE ALL ON FUNCTION platform.bump_placement_version() FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON platform.clusters, platform.tenant_placements TO selfbase_admin;
GRANT SELECT, UPDATE ON platform.placement_version TO selfbase_admin;
-- capacity metrics: databases per cluster against their maximum
GRANT SELECT ON platform.clusters, platform.tenant_placements, platform.placement_version TO selfbase_monitor;
"""
