#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: tenant_table
short_description: Make application tables tenant-scoped, with row-level security
version_added: 0.1.0
description:
  - Makes application tables (O(tables), in one transaction) hold the rows of many tenants safely.
  - B(The tenant column.) A C(uuid) column (O(tables[].tenant_column)) that is C(NOT NULL), defaults to
    the session's tenant (function C(platform.current_tenant_id)), references C(platform.tenants) with
    O(tables[].on_delete), and leads an index (followed by O(tables[].index_columns)).
  - B(Backfill.) When the column is added to a table that has rows, or has rows without a tenant,
    O(tables[].backfill_tenant) names the tenant they belong to; without it the module refuses before any write.
  - B(Row-level security), enabled and forced (the table's owner is filtered too). The policies it owns are named
    C(selfbase_*) - C(selfbase_tenant) lets the granted roles see and write only rows of the session's tenant
    (C(USING) and C(WITH CHECK), so a row cannot be written into, or moved to, another tenant);
    C(selfbase_control) lets C(selfbase_admin) (the control plane) reach every row; C(selfbase_graphql_read) lets
    C(selfbase_graphql) read outside mutations, where Hasura does not set C(hasura.user) and its own
    C(X-Hasura-Tenant-Id) permissions (M(selfbase.platform.hasura_metadata)) isolate GraphQL queries, as on the
    platform's tables.
  - The session's tenant is C(app.tenant_id) (set it with C(SET LOCAL) in each transaction) or, through Hasura, the
    C(x-hasura-tenant-id) of C(hasura.user). The policy evaluates it once per statement, not once per row.
  - Policies it does not own are reported and left alone, unless O(tables[].exclusive=true) drops them.
  - B(Grants.) Each role of O(tables[].grants) gets exactly its privileges on the table; PUBLIC gets none.
  - O(tables[].state=absent) drops the C(selfbase_*) policies and un-forces row-level security (and disables it when
    no other policy is left), so the granted roles see every row again; with O(tables[].drop_column=true) it also drops
    the tenant
    column with its foreign key and index, and which tenant a row belonged to is lost. It refuses while the table
    holds rows of more than one tenant.
  - Runs as the table's owner or a superuser (C(ALTER TABLE) needs it). The backfill runs as the table's owner
    (C(SET LOCAL ROLE)), so that the owner's triggers, rules and CHECK expressions never run with a superuser's
    rights. Every change is recorded in C(platform.audit_log) (entity C(tenant_table), key C(<schema>.<table>)).
extends_documentation_fragment:
  - selfbase.platform.postgres
attributes:
  check_mode:
    support: full
    description: Reports the statements it would run and the predicted state, and writes nothing.
  diff_mode:
    support: full
    description: Shows each changed table's state before and after.
  idempotent:
    support: full
    description: A second run with the same options changes nothing and reports no change.
options:
  tables:
    description: The tables, each made tenant-scoped in the same transaction.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Name of the table.
        type: str
        required: true
      schema:
        description: Schema of the table. The C(platform) schema is refused, its isolation is the platform's own.
        type: str
        default: public
      tenant_column:
        description: Name of the tenant column. An existing column must be of type C(uuid).
        type: str
        default: tenant_id
      on_delete:
        description: What deleting a tenant does to its rows (the foreign key's C(ON DELETE)).
        type: str
        choices: [cascade, restrict, no_action]
        default: cascade
      index_columns:
        description: Columns that follow the tenant column in its index, for the queries the application runs most.
        type: list
        elements: str
        default: []
      backfill_tenant:
        description:
          - Slug of the tenant that owns the rows that have no tenant yet (an existing single-tenant table).
          - Required when such rows exist.
        type: str
      grants:
        description: The roles that use the table and their privileges; nothing else is granted to them, or to PUBLIC.
        type: list
        elements: dict
        default:
          - {role: selfbase_app, privileges: [select, insert, update, delete]}
          - {role: selfbase_graphql, privileges: [select, insert, update, delete]}
          - {role: selfbase_admin, privileges: [select, insert, update, delete]}
        suboptions:
          role:
            description: A role (for example C(selfbase_app), the application's group role).
            type: str
            required: true
          privileges:
            description: Privileges on the table; an empty list revokes them all.
            type: list
            elements: str
            choices: [select, insert, update, delete]
            required: true
      graphql_read:
        description:
          - Whether C(selfbase_graphql) reads every row outside mutations (Hasura's permissions filter GraphQL queries).
          - With V(true), Hasura's database login, used without C(hasura.user) (its own SQL, or a query in which Hasura
            does not set it), reads every tenant's rows of this table, as it does for the platform's tables, and Hasura's
            C(X-Hasura-Tenant-Id) permission is then the only isolation. Keep its login and admin secret as trusted as
            the control plane's.
          - V(false) filters its reads on C(hasura.user) too, which Hasura sets only in mutations.
        type: bool
        default: true
      exclusive:
        description:
          - Drop the table's policies that this module does not own, and revoke the privileges of roles not in
            O(tables[].grants).
        type: bool
        default: false
      drop_column:
        description: With O(tables[].state=absent), drop the tenant column too.
        type: bool
        default: false
      state:
        description: V(present) makes the table tenant-scoped, V(absent) undoes what this module did.
        type: str
        choices: [present, absent]
        default: present
notes:
  - Run it as the tables' owner, or on the db host as C(postgres) (C(become_user=postgres)).
seealso:
  - module: selfbase.platform.hasura_metadata
  - module: selfbase.platform.platform_schema
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Make the orders table of a single-tenant application multi-tenant (its rows belong to acme)
  selfbase.platform.tenant_table:
    login_db: "{{ selfbase_db_name }}"
    tables:
      - name: orders
        backfill_tenant: acme
        index_columns: [created_at]

- name: Two tables isolated in PostgreSQL and filtered in Hasura on the same tenant column
  vars:
    app_tables: [{schema: public, name: products}, {schema: public, name: orders}]
  block:
    - name: Isolate their rows
      selfbase.platform.tenant_table:
        login_db: "{{ selfbase_db_name }}"
        tables: "{{ app_tables }}"

    - name: Filter them in GraphQL on the same column, for the same roles
      selfbase.platform.hasura_metadata:
        admin_secret: "{{ vault_hasura_admin_secret }}"
        tables: >-
          {{ app_tables | map('combine', {'tenant_column': 'tenant_id', 'tenant_roles': ['user'],
                                          'tenant_operations': ['select']}) | list }}

- name: The application only reads products, and Hasura's login loses its privileges on them
  selfbase.platform.tenant_table:
    login_db: "{{ selfbase_db_name }}"
    tables:
      - name: products
        grants:
          - {role: selfbase_app, privileges: [select]}
          - {role: selfbase_graphql, privileges: []}
          - {role: selfbase_admin, privileges: [select, insert, update, delete]}

- name: Stop managing a table (its policies go; the tenant column stays)
  selfbase.platform.tenant_table:
    login_db: "{{ selfbase_db_name }}"
    tables: [{name: orders, state: absent}]
'''

RETURN = r'''
tables:
  description: Each table after the run (in check mode, as it would be).
  returned: success
  type: list
  elements: dict
  contains:
    table:
      description: C(<schema>.<table>).
      type: str
    changed:
      description: Whether this table changed.
      type: bool
    state:
      description:
        - C(column) (type, not_null, default), C(fks), C(index), C(rls), C(forced), C(owner), C(policies) by name
          (cmd, roles, using, check, without layout) and C(grants) by role.
      type: dict
  sample:
    - table: public.orders
      changed: true
      state:
        column: {type: uuid, not_null: true, default: platform.current_tenant_id()}
        fks: [{name: orders_tenant_id_fkey, on_delete: c}]
        index: orders_tenant_id_tenant_idx
        rls: true
        forced: true
        owner: postgres
        grants: {selfbase_app: [delete, insert, select, update]}
actions:
  description: The statements of this run, in order (in check mode, those it would run).
  returned: success
  type: list
  elements: str
  sample: ["public.orders: add column tenant_id uuid", "public.orders: backfill 120 row(s) with tenant acme"]
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import postgres_argument_spec, run_module
from ansible_collections.selfbase.platform.plugins.module_utils.tenant_tables import TABLE_OPTIONS, run


def main():
    argument_spec = postgres_argument_spec()
    argument_spec['tables'] = dict(type='list', elements='dict', required=True, options=TABLE_OPTIONS)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda conn: run(module, conn))


if __name__ == '__main__':
    main()
