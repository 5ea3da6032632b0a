#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: tenant_routes
short_description: Read where each placed tenant's database is, and write PgBouncer's routes to them
version_added: 0.1.0
description:
  - Reads the active placements of the placement registry (migration 0010) with their clusters, and the registry's
    version, which moves on with every change of a placement or cluster.
  - With O(dest), writes them as a PgBouncer C([databases]) section, one entry a tenant named by its slug
    (C(acme = host=... port=... dbname=tenant_acme)), for a PgBouncer on an application host to include
    (C(%include)). Applications then reach a tenant's database by the tenant's name, whichever cluster holds it.
    PgBouncer reads the file again on C(RELOAD) (C(systemctl reload)), which keeps its open connections.
  - The file holds nothing but the routes, so it changes only when a route does. The same text is returned as
    RV(databases), for a role that writes PgBouncer's whole configuration (the C(tenant_router) role).
options:
  dest:
    description:
      - The file to write. Not set, nothing is written and the module only reads.
    type: path
  cluster_addresses:
    description:
      - Where applications reach a cluster, by cluster name, when that is not the address the control plane
        uses (the cluster's O(selfbase.platform.tenant_cluster#module:host)), for example a local HAProxy port
        in front of a Patroni cluster. Each a dict with C(host) and C(port).
    type: dict
    default: {}
  pool_size:
    description:
      - The pool size of every tenant's entry. Not set, PgBouncer's C(default_pool_size).
    type: int
extends_documentation_fragment:
  - selfbase.platform.postgres
  - ansible.builtin.files
attributes:
  check_mode:
    support: full
    description: Reports whether the file would change, and writes nothing.
  diff_mode:
    support: full
    description: Shows the file before and after.
  idempotent:
    support: full
    description: A second run with the same registry reports no change.
notes:
  - The login needs C(selfbase_admin) or C(selfbase_monitor) on the platform database.
seealso:
  - module: selfbase.platform.tenant_placement
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Write the tenant routes of this application host's PgBouncer
  selfbase.platform.tenant_routes:
    login_host: db1.internal
    login_db: selfbase
    dest: /etc/pgbouncer/tenants.ini
    owner: postgres
    mode: "0640"
    cluster_addresses:
      shared-1: {host: 127.0.0.1, port: 5433}
  delegate_to: "{{ inventory_hostname }}"
'''

RETURN = r'''
version:
  description: The registry's version that was read.
  returned: always
  type: int
  sample: 42
databases:
  description: The PgBouncer C([databases]) section of the routes, as O(dest) gets it.
  returned: always
  type: str
  sample: "[databases]\nacme = host=10.0.2.11 port=5432 dbname=tenant_acme\n"
routes:
  description: Each active tenant database, by tenant slug.
  returned: always
  type: list
  elements: dict
  contains:
    tenant:
      description: The tenant's slug, the name applications connect to.
      type: str
      sample: acme
    tier:
      description: V(database) or V(dedicated).
      type: str
      sample: database
    cluster:
      description: The cluster that holds it.
      type: str
      sample: shared-1
    host:
      description: Where applications reach the cluster.
      type: str
      sample: 10.0.2.11
    port:
      description: Its port.
      type: int
      sample: 5432
    database:
      description: The tenant's database.
      type: str
      sample: tenant_acme
    login:
      description: The tenant's login.
      type: str
      sample: tenant_acme
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.placements import routes_run
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import postgres_argument_spec, run_module


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        dest=dict(type='path'),
        cluster_addresses=dict(type='dict', default={}),
        pool_size=dict(type='int'),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True, add_file_common_args=True)
    run_module(module, lambda conn: routes_run(module, conn), autocommit=True)


if __name__ == '__main__':
    main()
