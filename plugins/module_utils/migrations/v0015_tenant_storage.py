# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0015: the size of each tenant database, as selfbase.platform.tenant_storage last sampled it. Every
sample that changes a size records the difference as one storage_bytes usage event of the tenant, in the same
transaction as the new size, so nothing is counted twice. Only the control plane writes it; the monitor reads it."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0015"
NAME = "tenant_storage"
SQL = r"""
-- selfbase platform schema, version 0015: sampled sizes of tenant databases.
SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = pg_catalog, platform, pg_temp;

-- Keyed by where the database is, not by placement: a database that is dropped or left behind by a move is
-- sampled one last time (its size recorded as given back) before its row goes.
CREATE TABLE platform.tenant_database_sizes (
  cluster    text NOT NULL,
  database   text NOT NULL,
  tenant_id  uuid NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
  bytes      bigint NOT NULL CHECK (bytes >= 0),
  -- samples that changed the size; the usage event of the next one is keyed by it
  samples    bigint NOT NULL DEFAULT 1 CHECK (samples >= 1),
  sampled_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
  PRIMARY KEY (cluster, database)
);
CREATE INDEX ON platform.tenant_database_sizes (tenant_id);

ALTER TABLE platform.tenant_database_sizes ENABLE ROW LEVEL SECURITY;
ALTER TABLE platform.tenant_database_sizes FORCE ROW LEVEL SECURITY;
CREATE POLICY control_plane ON platform.tenant_database_sizes TO selfbase_admin USING (true) WITH CHECK (true);
CREATE POLICY monitor_read ON platform.tenant_database_sizes FOR SELECT TO selfbase_monitor USING (true);
CREATE POLICY tenant_isolation ON platform.tenant_database_sizes
  USING (tenant_id = platform.current_tenant_id()) WITH CHECK (tenant_id = platform.current_tenant_id());

RESET ROLE;

-- selfbase.platform.tenant_storage serialises its runs on this row.
INSERT INTO platform.control_locks (name) VALUES ('tenant_storage');

REVOKE ALL ON platform.tenant_database_sizes FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON platform.tenant_database_sizes TO selfbase_admin;
GRANT SELECT ON platform.tenant_database_sizes TO selfbase_monitor;
"""
