# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The platform schema's migrations, oldest first. Add a module per migration
and list it here; never edit one that was released (its checksum is recorded)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib

from ansible_collections.selfbase.platform.plugins.module_utils.migrations import (
    v0001_tenancy_core, v0002_billing, v0003_hardening, v0004_ledger_read, v0005_edge_metering,
    v0006_billing_events, v0007_security_round3, v0008_tenant_choice, v0009_operators, v0010_placements,
    v0011_quota_status, v0012_meter_gaps, v0013_mrr_history, v0014_tax,
    v0015_tenant_storage, v0016_operator_create_tenant, v0017_self_serve_plans, v0018_entitlements,
    v0019_billing_sessions)

MIGRATIONS = [
    (m.VERSION, m.NAME, m.SQL, hashlib.sha256(m.SQL.encode('utf-8')).hexdigest())
    for m in (v0001_tenancy_core, v0002_billing, v0003_hardening, v0004_ledger_read, v0005_edge_metering,
              v0006_billing_events, v0007_security_round3, v0008_tenant_choice, v0009_operators, v0010_placements,
              v0011_quota_status, v0012_meter_gaps, v0013_mrr_history, v0014_tax, v0015_tenant_storage,
              v0016_operator_create_tenant, v0017_self_serve_plans, v0018_entitlements, v0019_billing_sessions)
]
