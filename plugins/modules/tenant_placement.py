#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: tenant_placement
short_description: Place tenants on a tier, with a database and login of their own
version_added: 0.1.0
description:
  - Records where each listed tenant's rows live (C(platform.tenant_placements), migration 0010) and, for the
    V(database) and V(dedicated) tiers, creates the tenant's database and login on a cluster registered with
    M(selfbase.platform.tenant_cluster). Tenants not listed are left as they are; a tenant with no placement is
    pooled (its rows live in the platform database's shared tables).
  - A new placement goes to the named cluster, or to the least-loaded active cluster of its tier with room (fewest
    tenant databases, then name). A full or draining cluster, or one past its storage limit, is never chosen; when
    no cluster has room the run fails before any write, naming each cluster of the tier and its use.
  - The database is created from O(template) (copied with C(CREATE DATABASE ... TEMPLATE)), or from the cluster's
    C(template1) and then the O(migrations) files, applied in order in one transaction as the tenant's login and
    recorded in the database (C(public.selfbase_migrations)) and the registry. Files added to the end of the list
    are applied on the next run; a changed, renamed or removed file is refused.
  - The tenant's login owns its database, is the only role besides superusers that may connect to it, and gets
    O(connection_limit) and O(session_settings). Its password is set when the login is created, as a SCRAM
    verifier computed here.
  - O(placements[].state=absent) retires a placement. Its login may no longer log in (its sessions end) and its
    database is kept, still counted on its cluster. With O(placements[].drop_database) the database and login are
    dropped and the placement removed.
  - Moving a placed tenant to another tier or cluster is refused (it needs an online move).
  - A failed run leaves its placements C(provisioning) on the cluster chosen; the next run finishes them there.
options:
  placements:
    description:
      - The tenants to place.
    type: list
    elements: dict
    required: true
    suboptions:
      tenant:
        description: The tenant's slug.
        type: str
        required: true
      tier:
        description: V(pooled), V(database) or V(dedicated).
        type: str
        choices: [pooled, database, dedicated]
        default: database
      cluster:
        description: The cluster to use; not set, one is chosen. Ignored for a tenant already placed on it.
        type: str
      database:
        description:
          - The database's (and login's) name. Not set, O(database_prefix) and the slug with hyphens made
            underscores.
        type: str
      password:
        description:
          - The password of the tenant's login, needed when the login is created. Keep it like the platform's
            other generated secrets (for example with the C(ansible.builtin.password) lookup). Never logged.
        type: str
      state:
        description: V(present) places the tenant, V(absent) retires (or drops) its placement.
        type: str
        choices: [present, absent]
        default: present
      drop_database:
        description: With O(placements[].state=absent), drop the database and login and remove the placement.
        type: bool
        default: false
  template:
    description:
      - A database on the cluster that new tenant databases copy (no one may be connected to it). Its objects keep
        their owner; grant what tenants need in it. Not with O(migrations).
    type: str
  migrations:
    description:
      - SQL files applied to each new tenant database, and files added later to the end of the list on every
        database, in order, as the tenant's login. Not with O(template).
    type: list
    elements: path
  database_prefix:
    description: The prefix of the default database names.
    type: str
    default: tenant_
  connection_limit:
    description: How many sessions a tenant's login may hold.
    type: int
    default: 20
  session_settings:
    description:
      - Settings of every tenant's login (C(ALTER ROLE ... SET)). Every login has its session limits.
    type: dict
    default:
      statement_timeout: 30s
      lock_timeout: 10s
      idle_in_transaction_session_timeout: 60s
extends_documentation_fragment:
  - selfbase.platform.postgres
  - selfbase.platform.tenant_clusters
attributes:
  check_mode:
    support: full
    description: Predicts each placement, the cluster chosen included, and writes nothing.
  diff_mode:
    support: full
    description: Shows each changed placement before and after.
  idempotent:
    support: full
    description: A second run with the same options reports no change.
notes:
  - The login needs C(selfbase_admin) (the control plane) on the platform database; each cluster's admin user
    needs CREATEDB and CREATEROLE there (a superuser has both).
  - A run holds the C(tenant_placement) lock of C(platform.control_locks) until it ends, on a connection of its
    own.
seealso:
  - module: selfbase.platform.tenant_cluster
  - module: selfbase.platform.tenants
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Give two tenants a database of their own
  selfbase.platform.tenant_placement:
    login_db: selfbase
    migrations:
      - files/app/001_schema.sql
      - files/app/002_orders.sql
    cluster_passwords:
      shared-1: "{{ lookup('ansible.builtin.file', inventory_dir ~ '/.secrets/shared-1') }}"
    placements:
      - tenant: acme
        password: "{{ lookup('ansible.builtin.password', inventory_dir ~ '/.secrets/tenant-acme', length=32) }}"
      - tenant: globex
        tier: dedicated
        cluster: globex-1
        password: "{{ lookup('ansible.builtin.password', inventory_dir ~ '/.secrets/tenant-globex', length=32) }}"

- name: Retire one, keeping its database
  selfbase.platform.tenant_placement:
    login_db: selfbase
    placements:
      - tenant: acme
        state: absent
'''

RETURN = r'''
placements:
  description: Each listed tenant's placement after this run (in check mode, as it would be), by slug.
  returned: always
  type: list
  elements: dict
  contains:
    tenant:
      description: The tenant's slug.
      type: str
      sample: acme
    tier:
      description: V(pooled), V(database) or V(dedicated).
      type: str
      sample: database
    cluster:
      description: The cluster that holds its database (null when pooled or absent).
      type: str
      sample: shared-1
    database:
      description: Its database, also the name of its login.
      type: str
      sample: tenant_acme
    login:
      description: Its login.
      type: str
      sample: tenant_acme
    state:
      description: V(active), V(retired), or V(absent) for a tenant with no placement.
      type: str
      sample: active
    migrations:
      description: The migration files applied to its database, in order, with their SHA-256.
      type: list
      elements: dict
      sample: [{"name": "001_schema.sql", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}]
changes:
  description: What this run changed (in check mode, would change), one entry a tenant.
  returned: always
  type: list
  elements: dict
  sample: [{"tenant": "acme", "action": "create"}]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.placements import placement_run
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import postgres_argument_spec, run_module


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        placements=dict(type='list', elements='dict', required=True, options=dict(
            tenant=dict(type='str', required=True),
            tier=dict(type='str', default='database', choices=['pooled', 'database', 'dedicated']),
            cluster=dict(type='str'),
            database=dict(type='str'),
            password=dict(type='str', no_log=True),
            state=dict(type='str', default='present', choices=['present', 'absent']),
            drop_database=dict(type='bool', default=False),
        )),
        template=dict(type='str'),
        migrations=dict(type='list', elements='path'),
        database_prefix=dict(type='str', default='tenant_'),
        cluster_passwords=dict(type='dict', default={}, no_log=True),
        connection_limit=dict(type='int', default=20),
        session_settings=dict(type='dict', default=dict(statement_timeout='30s', lock_timeout='10s',
                                                        idle_in_transaction_session_timeout='60s')),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda conn: placement_run(module, conn), autocommit=True)


if __name__ == '__main__':
    main()
