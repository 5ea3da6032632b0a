#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: tenant_export
short_description: Export one tenant's rows to a file, or import them into a database without that tenant
version_added: 0.1.0
description:
  - With O(state=exported), writes every row of one tenant to a JSON file on the host where the module runs,
    read in one snapshot (repeatable read, read only). The rows are those of C(platform.tenants) and of every
    platform table with a C(tenant_id) column, and of every application table made tenant-scoped by
    M(selfbase.platform.tenant_table) (its C(selfbase_tenant) policy and its foreign key to C(platform.tenants)).
    It serves data access requests (GDPR), and the recovery of one tenant without rolling back the others, for
    example from a restore drill's scratch instance.
  - With O(state=imported), loads such a file in one transaction into a database whose platform schema is at the
    same version and that does not have the tenant. Rows go in as they were exported, with their ids and times
    (triggers are off during the load, as with C(pg_restore --disable-triggers), so quota checks, usage rollups and
    audit stamps do not run a second time); then every foreign key of the loaded rows is checked, identity
    sequences move past the loaded ids, and the transaction commits. Referenced rows outside the tenant (its plan,
    metrics) must exist in the target.
  - Before any write, an import refuses a file with a row whose tenant column (in the target's schema) is not the
    file's tenant, and an import that would run code a non-superuser owns as this superuser session (CHECK and
    exclusion constraints, triggers and rules enabled C(ALWAYS) or C(REPLICA), index expressions, generated columns
    and domain CHECKs of the receiving tables), naming the table, the object and the function. Imported audit rows
    get C(imported_at) and C(imported_by), since their actor and time are only what the file says.
  - Needs a superuser login, which row-level security does not filter and which may turn triggers off; run it on
    the db host as C(postgres), like M(selfbase.platform.platform_schema).
  - The file is written with mode 0600 and holds the tenant's data as it is in the database (personal data
    included); keep it accordingly.
options:
  tenant:
    description: Slug of the tenant.
    type: str
    required: true
  path:
    description: The export file, on the host where the module runs.
    type: path
    required: true
  state:
    description:
      - V(exported) writes the file (only when its content would change).
      - V(imported) loads the file; a second run finds the same rows and changes nothing.
    type: str
    choices: [exported, imported]
    default: exported
extends_documentation_fragment:
  - selfbase.platform.postgres
attributes:
  check_mode:
    support: full
    description: Export writes no file; import loads and checks everything in a transaction that is rolled back.
  diff_mode:
    support: full
    description: Row counts per table, before and after (not the rows).
  idempotent:
    support: full
    description: Exporting unchanged rows again leaves the file alone; importing the same file again changes nothing.
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Export tenant acme (a data access request)
  selfbase.platform.tenant_export:
    login_db: selfbase
    tenant: acme
    path: /var/backups/selfbase/acme.json
  become: true
  become_user: postgres

- name: Recover tenant acme alone, from a restore drill's scratch instance of last night
  selfbase.platform.tenant_export:
    login_db: selfbase
    login_port: 5499
    login_host: /var/lib/postgresql/selfbase-drill
    tenant: acme
    path: /var/tmp/acme.json
  become: true
  become_user: postgres

- name: Load it into a database without acme
  selfbase.platform.tenant_export:
    login_db: selfbase
    tenant: acme
    path: /var/tmp/acme.json
    state: imported
  become: true
  become_user: postgres
'''

RETURN = r'''
path:
  description: The export file.
  returned: success
  type: str
  sample: /var/backups/selfbase/acme.json
tenant_id:
  description: Id of the tenant.
  returned: success
  type: str
  sample: 0b6f3f7e-2a7d-4c55-9a7e-6c1f4a9d2b11
schema_version:
  description: Platform schema version of the database (and of the file).
  returned: success
  type: str
  sample: "0004"
rows:
  description: Rows of the tenant per table, by schema-qualified name.
  returned: success
  type: dict
  sample: {"platform.tenants": 1, "platform.tenant_domains": 2, "public.orders": 120}
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import postgres_argument_spec, run_module
from ansible_collections.selfbase.platform.plugins.module_utils.tenant_export import run


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        tenant=dict(type='str', required=True),
        path=dict(type='path', required=True),
        state=dict(type='str', choices=['exported', 'imported'], default='exported'),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda conn: run(module, conn))


if __name__ == '__main__':
    main()
