#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: tenant_storage
short_description: Sample the size of every tenant database and record it as the tenant's storage usage
version_added: 0.1.0
description:
  - Reads the size of each database the placement registry places (migration 0010; the V(database) and
    V(dedicated) tiers, retired placements too, whose databases are kept) on its cluster, as the cluster's
    administrator, and compares it with the size last recorded in C(platform.tenant_database_sizes)
    (migration 0015).
  - Each difference becomes one C(storage_bytes) usage event of the tenant, written in the same transaction as the
    new size, so a retry after any failure counts nothing twice and the tenant's usage is the sum of the sizes of
    its databases. Growth past an V(overage) quota is counted as overage as for any delta usage event; a V(hard)
    quota does not refuse a sample, since the bytes are already stored.
  - A database the registry no longer places (dropped) has its last size given back (a negative event) and its
    row removed.
  - Pooled tenants are not sampled; their rows share the platform's tables, and their C(storage_bytes) usage comes
    from the events the application records.
  - Runs are serialised on the C(tenant_storage) control lock. Schedule it (the C(playbooks/tenant_storage.yml)
    playbook; an hourly AWX schedule in C(playbooks/awx_configure.yml)).
extends_documentation_fragment:
  - selfbase.platform.postgres
  - selfbase.platform.tenant_clusters
attributes:
  check_mode:
    support: full
    description: Measures and reports the changes it would record, and writes nothing.
  diff_mode:
    support: full
    description: Shows the recorded sizes that change, by C(cluster/database).
  idempotent:
    support: full
    description: A second run while no database's size changed reports no change.
notes:
  - The login needs C(selfbase_admin) on the platform database. A cluster's administrator needs C(CONNECT) on the
    tenant databases or C(pg_read_all_stats) to read their sizes; the administrator C(tenant_placement) uses has
    both.
  - A cluster that cannot be read is named in a warning and in RV(unreachable_clusters), its databases keep their last
    recorded size, and the module fails after recording the others.
seealso:
  - module: selfbase.platform.tenant_placement
  - module: selfbase.platform.tenant_quota
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Record the storage of the tenant databases
  selfbase.platform.tenant_storage:
    login_db: selfbase
    cluster_passwords:
      dedicated-1: "{{ lookup('ansible.builtin.file', inventory_dir ~ '/.secrets/tenant-cluster-dedicated-1') }}"
  become: true
  become_user: postgres
'''

RETURN = r'''
samples:
  description: Each tenant database that was measured, and each recorded one that is no longer placed.
  returned: always
  type: list
  elements: dict
  contains:
    tenant:
      description: The tenant's slug.
      type: str
      sample: acme
    cluster:
      description: The cluster that holds the database.
      type: str
      sample: shared-1
    database:
      description: The database.
      type: str
      sample: tenant_acme
    previous:
      description: The size recorded before, in bytes (0 for a database never sampled).
      type: int
      sample: 7717379
    bytes:
      description: The size now (0 for a database given back).
      type: int
      sample: 7856643
    delta:
      description: The usage event recorded, in bytes (0 when the size did not change).
      type: int
      sample: 139264
    action:
      description: V(create) (first sample), V(update), V(keep) or V(delete) (given back).
      type: str
      sample: update
unreachable_clusters:
  description: The clusters that could not be read.
  returned: always
  type: list
  elements: str
  sample: []
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import postgres_argument_spec, run_module
from ansible_collections.selfbase.platform.plugins.module_utils.tenant_storage import storage_run


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(cluster_passwords=dict(type='dict', default={}, no_log=True))
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda conn: storage_run(module, conn), autocommit=True)


if __name__ == '__main__':
    main()
