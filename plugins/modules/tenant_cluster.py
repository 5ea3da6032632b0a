#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: tenant_cluster
short_description: Register a PostgreSQL cluster that holds tenant databases
version_added: 0.1.0
description:
  - Records a cluster in the placement registry (C(platform.clusters), migration 0010) with its tier, how the
    control plane reaches it, and its capacity. M(selfbase.platform.tenant_placement) puts tenant databases on
    the registered clusters.
  - A cluster of tier V(database) holds many tenants' databases (about 150 a server); one of tier V(dedicated)
    holds one tenant's, by default.
  - The cluster's password is never stored; M(selfbase.platform.tenant_placement) takes it at run time.
  - Every change is recorded in C(platform.audit_log) (entity C(cluster)) and moves the registry's version on.
options:
  name:
    description:
      - The cluster's name (lower-case letters, digits and hyphens), as placements refer to it.
    type: str
    required: true
  tier:
    description:
      - V(database) (a shared cluster, a database per tenant) or V(dedicated) (a tenant's own cluster).
      - Required for a new cluster. It cannot change while the cluster holds tenant databases.
    type: str
    choices: [database, dedicated]
  host:
    description:
      - How the control plane reaches the cluster's primary, as a host name, address or socket directory, or a
        comma-separated list (the members of a Patroni cluster; the read-write one is used). Required for a new
        cluster.
    type: str
  port:
    description:
      - The cluster's port. Not set, a new cluster gets 5432 and an existing one keeps its port.
    type: int
  admin_user:
    description:
      - The role that creates tenants' databases and logins there (a superuser, or one with CREATEDB and
        CREATEROLE). Not set, a new cluster gets C(postgres).
    type: str
  admin_db:
    description:
      - The database that role connects to. Not set, a new cluster gets C(postgres).
    type: str
  max_databases:
    description:
      - How many tenant databases the cluster may hold; a full cluster is never chosen. Not set, a new cluster
        gets 150 (tier V(database)) or 1 (tier V(dedicated)). Add a cluster when one reaches 80%.
    type: int
  storage_max_bytes:
    description:
      - A cluster whose tenant databases hold this many bytes is not chosen for new ones. Not set, a new cluster
        has no such limit.
    type: int
  status:
    description:
      - V(active) clusters take new tenants; V(draining) ones keep theirs and take no more.
    type: str
    choices: [active, draining]
  state:
    description:
      - V(absent) removes the cluster from the registry; it must hold no tenant database.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - selfbase.platform.postgres
attributes:
  check_mode:
    support: full
    description: Reports the cluster as the run would leave it, and writes nothing.
  diff_mode:
    support: full
    description: Shows the cluster before and after.
  idempotent:
    support: full
    description: A second run with the same options reports no change.
notes:
  - The login needs C(selfbase_admin) (the control plane) on the platform database.
seealso:
  - module: selfbase.platform.tenant_placement
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: A shared cluster for tenant databases
  selfbase.platform.tenant_cluster:
    login_db: selfbase
    name: shared-1
    tier: database
    host: 10.0.2.11,10.0.2.12,10.0.2.13
    max_databases: 150

- name: Stop putting new tenants there
  selfbase.platform.tenant_cluster:
    login_db: selfbase
    name: shared-1
    status: draining
'''

RETURN = r'''
cluster:
  description: The cluster after this run (in check mode, as it would be); null when removed.
  returned: always
  type: dict
  contains:
    name:
      description: The cluster's name.
      type: str
      sample: shared-1
    tier:
      description: V(database) or V(dedicated).
      type: str
      sample: database
    host:
      description: How the control plane reaches it.
      type: str
      sample: 10.0.2.11,10.0.2.12
    port:
      description: Its port.
      type: int
      sample: 5432
    admin_user:
      description: The role that creates tenant databases there.
      type: str
      sample: postgres
    admin_db:
      description: The database that role connects to.
      type: str
      sample: postgres
    max_databases:
      description: Its capacity in tenant databases.
      type: int
      sample: 150
    storage_max_bytes:
      description: Its storage limit for new tenants, or null.
      type: int
      sample: 536870912000
    status:
      description: V(active) or V(draining).
      type: str
      sample: active
    databases:
      description: The tenant databases it holds (placements of every state).
      type: int
      sample: 42
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.placements import cluster_run
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import postgres_argument_spec, run_module


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        name=dict(type='str', required=True),
        tier=dict(type='str', choices=['database', 'dedicated']),
        host=dict(type='str'),
        port=dict(type='int'),
        admin_user=dict(type='str'),
        admin_db=dict(type='str'),
        max_databases=dict(type='int'),
        storage_max_bytes=dict(type='int'),
        status=dict(type='str', choices=['active', 'draining']),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda conn: cluster_run(module, conn), autocommit=True)


if __name__ == '__main__':
    main()
