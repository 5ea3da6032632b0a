# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0004: the control plane and monitoring may read the migration ledger, so that every module checks
the schema version it needs in one way (postgres.require_schema)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0004"
NAME = "ledger_read"
SQL = r"""
-- selfbase platform schema, version 0004: the migration ledger is readable by
-- the control plane and monitoring (read only; the lock row stays private).
GRANT USAGE ON SCHEMA selfbase_meta TO selfbase_admin, selfbase_monitor;
GRANT SELECT ON selfbase_meta.schema_migrations TO selfbase_admin, selfbase_monitor;
"""
