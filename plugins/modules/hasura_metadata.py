#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: hasura_metadata
short_description: Track tables, functions, relationships, tenant permissions and actions in Hasura
version_added: 0.1.0
description:
  - Declares which tables and SQL functions of one Hasura source are tracked, with their configuration, relationships
    and per-role permissions, including a tenant-scoped shorthand that isolates tenants from each other.
  - The module owns only the tables listed in O(tables), the functions listed in O(functions), the endpoints in
    O(rest_endpoints) and the actions in O(actions) with their output types. Every other object of the metadata
    (other tables, such as the ones nhost/auth tracks in schema C(auth), other sources, other actions, remote
    schemas, ...) is sent back exactly as Hasura exported it.
  - Within a listed table, the module owns only what the task sets. O(tables[].configuration),
    O(tables[].object_relationships) and O(tables[].array_relationships) are replaced when given and left alone when
    omitted; an empty list removes them all. When O(tables[].permissions) or O(tables[].tenant_roles) is given, the
    four permission lists of the table (select, insert, update, delete) become exactly what the task declares, so a
    permission of a role that is not declared is removed. Other keys (event triggers, computed fields, remote
    relationships, ...) are kept.
  - The run exports the metadata (C(export_metadata) version 2, with its C(resource_version)), merges the owned
    objects, normalises both sides (order of lists, default values, the two spellings of custom column names) and
    compares them. Only when they differ does it send C(replace_metadata) version 2 with that C(resource_version).
    Hasura answers 409 when the metadata changed meanwhile (nhost/auth applies its own metadata at start-up); the
    module then exports, merges and tries once more, and fails if it conflicts again.
  - Hasura refuses metadata that would be inconsistent (for example, a table that does not exist in the database),
    so a refused write changes nothing. After the run, C(get_inconsistent_metadata) must report no inconsistent
    object, otherwise the module fails with the list.
options:
  source:
    description:
      - Name of the Hasura database source that holds the tables. It must already exist in the metadata (Hasura
        creates C(default) from E(HASURA_GRAPHQL_DATABASE_URL)).
    type: str
    default: default
  state:
    description:
      - V(present) tracks the listed tables and sets what the task declares for them.
      - V(absent) untracks the listed tables (only them), with their relationships and permissions. Only
        O(tables[].schema) and O(tables[].name) are used then. Relationships of other tables that point to them must
        be removed first, or Hasura refuses the change as inconsistent.
    type: str
    choices: [present, absent]
    default: present
  source_settings:
    description:
      - Connection settings of the source (its C(configuration.connection_info)) that the module owns. Only the
        settings given are compared and set; the database URL and every other setting are left as stored.
      - Hasura reads these from its environment (E(HASURA_GRAPHQL_USE_PREPARED_STATEMENTS), ...) only when it creates
        the C(default) source, on its first start with an empty metadata catalog; afterwards only the database URL
        comes from the environment. A setting changed later (for example prepared statements switched off for
        PgBouncer's transaction pooling) takes effect only through the metadata, which this option writes.
      - Applied with either O(state).
    type: dict
    suboptions:
      use_prepared_statements:
        description: Whether Hasura prepares statements on the source (Hasura's default when absent is V(false)).
        type: bool
      isolation_level:
        description: Transaction isolation level of Hasura's queries on the source.
        type: str
        choices: [read-committed, repeatable-read, serializable]
  tenant_session_variable:
    description:
      - Session variable that carries the tenant of the request, used by the tenant-scoped shorthand. nhost/auth
        puts it into the JWT claims through E(AUTH_JWT_CUSTOM_CLAIMS).
      - Session variables are case-insensitive in Hasura; the value is written as given.
    type: str
    default: X-Hasura-Tenant-Id
  tables:
    description:
      - The tables this task owns. A table may be listed once. At least one of O(tables), O(functions) and
        O(rest_endpoints) is required.
    type: list
    elements: dict
    suboptions:
      schema:
        description: Schema of the table.
        type: str
        default: public
      name:
        description: Name of the table.
        type: str
        required: true
      tenant_column:
        description:
          - Ownership column of the table, the tenant each row belongs to (for example C(tenant_id), or C(id) on the
            tenants table itself). Required when O(tables[].tenant_roles) is not empty.
        type: str
      tenant_roles:
        description:
          - Roles that get tenant-scoped permissions. For each role and each operation of
            O(tables[].tenant_operations), the module generates
          - "C(select): O(tables[].columns) (all columns when omitted), filtered on
            C({<tenant_column>: {_eq: <tenant_session_variable>}})."
          - "C(insert): O(tables[].columns) without the tenant column, a C(check) with the same condition, and
            C(set: {<tenant_column>: <tenant_session_variable>}), so the tenant comes from the session, never from
            the client."
          - "C(update): O(tables[].columns) without the tenant column, with the same filter. The tenant column is
            never updatable."
          - "C(delete): the same filter."
          - O(tables[].permissions) for such a role refines the generated permission instead of replacing it, see
            there.
          - C(admin) cannot be given, Hasura's admin role has every permission.
        type: list
        elements: str
      tenant_operations:
        description:
          - Operations generated for each of O(tables[].tenant_roles). An operation given in O(tables[].permissions)
            for a tenant role is generated as well.
        type: list
        elements: str
        choices: [select, insert, update, delete]
        default: [select, insert, update, delete]
      columns:
        description:
          - Columns the tenant roles may use. Required when a tenant role gets C(insert) or C(update), because the
            module does not read the database and cannot list the columns without the tenant column itself.
        type: list
        elements: str
      configuration:
        description:
          - Hasura table configuration, as in the metadata, for example C(custom_name), C(custom_root_fields) and
            C(column_config). Replaces the stored configuration when given; left alone when omitted.
        type: dict
      object_relationships:
        description:
          - Object relationships of the table; replace the stored ones when given, left alone when omitted.
        type: list
        elements: dict
        suboptions:
          name:
            description: Name of the relationship (a field of the GraphQL type).
            type: str
            required: true
          column:
            description: Column of this table with a foreign key to the other table.
            type: str
          using:
            description:
              - The relationship's C(using) as in Hasura's metadata, for example a C(manual_configuration).
              - Exactly one of O(tables[].object_relationships[].column) and this is required.
            type: dict
      array_relationships:
        description:
          - Array relationships of the table; replace the stored ones when given, left alone when omitted.
        type: list
        elements: dict
        suboptions:
          name:
            description: Name of the relationship.
            type: str
            required: true
          table:
            description:
              - The other table, whose O(tables[].array_relationships[].column) has a foreign key to this table.
              - A dict with C(schema) (default C(public)) and C(name), or a string C(schema.name).
            type: raw
          column:
            description: Column of the other table that references this table.
            type: str
          using:
            description:
              - The relationship's C(using) as in Hasura's metadata. Exclusive with
                O(tables[].array_relationships[].table) and O(tables[].array_relationships[].column), which are
                otherwise required together.
            type: dict
      permissions:
        description:
          - "Permissions per role and operation: C({<role>: {select|insert|update|delete: <permission>}}), each
            permission as in Hasura's metadata (C(columns), C(filter), C(check), C(set), C(limit),
            C(allow_aggregations), C(backend_only), ...). Unknown keys are refused."
          - For a role that is not in O(tables[].tenant_roles), the permission is used as given.
          - For a tenant role, it refines the generated permission. C(filter) and C(check) are combined with the
            tenant condition by C(_and); C(set) is merged with the tenant preset; C(columns) replaces
            O(tables[].columns) and must not contain the tenant column for C(insert) and C(update) (nor be C(*));
            other keys are added.
          - When this or O(tables[].tenant_roles) is given, the permissions of the table are exactly the declared
            ones; when both are omitted, the stored permissions are left alone. V({}) removes them all.
        type: dict
  functions:
    description:
      - The SQL functions this task tracks (or, with O(state=absent), untracks). A function may be listed once;
        Hasura refuses overloaded functions. A function returns rows of a tracked table (C(SETOF table)); Hasura
        exposes it with that table's select permission of the calling role.
      - Within a listed function, the module owns C(configuration.exposed_as) when O(functions[].exposed_as) is
        given and the permission list when O(functions[].roles) is given; other keys are kept.
    type: list
    elements: dict
    suboptions:
      schema:
        description: Schema of the function.
        type: str
        default: public
      name:
        description: Name of the function.
        type: str
        required: true
      exposed_as:
        description:
          - Where the function appears in the GraphQL schema. Omitted, Hasura infers it from the function's
            volatility (C(VOLATILE) functions become mutations, which run with C(hasura.user) set).
        type: str
        choices: [query, mutation]
      roles:
        description:
          - The roles that may call the function, exactly (function permissions); V([]) removes them all. Each
            role needs a select permission on the table the function returns, otherwise Hasura reports the
            permission as inconsistent.
          - Function permissions apply when Hasura runs with E(HASURA_GRAPHQL_INFER_FUNCTION_PERMISSIONS=false) (the
            selfbase.platform.hasura role sets it); with Hasura's default, every role with select permission on the
            returned table may call a function.
        type: list
        elements: str
  rest_collection:
    description:
      - The query collection that holds the GraphQL operations of O(rest_endpoints). The module owns only the
        queries named after its endpoints; other queries of the collection are kept.
    type: str
    default: selfbase_rest
  rest_endpoints:
    description:
      - RESTified endpoints this task owns, served by Hasura at C(/api/rest/<url>) with the caller's role and
        session, each running one GraphQL query or mutation kept in O(rest_collection) under the endpoint's name.
      - With O(state=absent) the listed endpoints and their queries are removed (only O(rest_endpoints[].name) is
        used).
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the endpoint, and of its query in the collection.
        type: str
        required: true
      url:
        description:
          - Path under C(/api/rest/), without a leading slash; a segment C(:name) is taken from the path into the
            query variable C($name). Required with O(state=present).
        type: str
      methods:
        description: HTTP methods served. A mutation is not served over V(GET).
        type: list
        elements: str
        choices: [GET, POST, PUT, PATCH, DELETE]
        default: [GET]
      query:
        description: The GraphQL operation (one query or mutation). Required with O(state=present).
        type: str
      comment:
        description: A comment stored with the endpoint.
        type: str
  actions:
    description:
      - Hasura Actions this task owns, each a GraphQL query or mutation that Hasura answers by calling
        O(actions[].handler) with the caller's session, with the object type it returns kept in the metadata's
        custom types. The module owns the action (definition, permissions, comment) and that object type; other
        actions and custom types are kept.
      - With O(state=absent) the listed actions are removed (only O(actions[].name) is used); their output types
        are left, since other actions may use them.
    type: list
    elements: dict
    suboptions:
      name:
        description: Name of the action, its root field in the GraphQL schema.
        type: str
        required: true
      type:
        description: Whether the action is a query or a (synchronous) mutation.
        type: str
        choices: [mutation, query]
        default: mutation
      handler:
        description:
          - URL Hasura posts the action's request to. Required with O(state=present).
          - It may start with C({{ENV_VAR}}), which each Hasura instance reads from its own environment (for
            example the address of a service on its own host).
        type: str
      arguments:
        description:
          - The action's arguments, each a name and a GraphQL type (a built-in or database scalar such as
            C(String!) or C(uuid), an enum or an input object).
        type: list
        elements: dict
        suboptions:
          name:
            description: Name of the argument.
            type: str
            required: true
          type:
            description: GraphQL type of the argument.
            type: str
            required: true
      output_type:
        description: Name of the object type the action returns. Required with O(state=present).
        type: str
      output_fields:
        description:
          - The fields of O(actions[].output_type), each a name and a scalar or enum type. Actions that return the
            same type must give the same fields. Required with O(state=present).
        type: list
        elements: dict
        suboptions:
          name:
            description: Name of the field.
            type: str
            required: true
          type:
            description: GraphQL type of the field.
            type: str
            required: true
      roles:
        description: The roles that may call the action, exactly (action permissions).
        type: list
        elements: str
        default: []
      forward_client_headers:
        description:
          - Whether Hasura forwards the client's headers (its C(Authorization) included) to the handler, so that the
            handler can check the caller's token itself.
        type: bool
        default: false
      timeout:
        description: Seconds Hasura waits for the handler.
        type: int
        default: 30
      comment:
        description: A comment stored with the action.
        type: str
extends_documentation_fragment:
  - selfbase.platform.hasura
attributes:
  check_mode:
    support: full
    description: Exports the metadata, reports what would change, with the diff, and writes nothing.
  diff_mode:
    support: full
    description:
      - Shows the owned tables, functions and REST endpoints before and after, normalised, keyed by C(schema.name)
        (functions by C(function schema.name), endpoints by C(rest name)); an object that is not there is absent
        from that side.
  idempotent:
    support: full
    description: A second run with the same options sends no C(replace_metadata) and reports no change.
notes:
  - Requires Hasura GraphQL Engine v2 (metadata format version 3, metadata API version 2).
  - All options are validated before Hasura is contacted; an error names the field, for example
    C(tables[1] (platform.projects\).permissions.user.update.columns).
  - The tenant-scoped shorthand is the GraphQL side of the platform's tenant isolation. Row-level security in
    PostgreSQL is the other side, see M(selfbase.platform.platform_schema).
seealso:
  - name: Hasura metadata API
    description: export_metadata, replace_metadata and get_inconsistent_metadata.
    link: https://hasura.io/docs/latest/api-reference/metadata-api/manage-metadata/
  - name: Hasura permissions
    description: The permission objects used in O(tables[].permissions).
    link: https://hasura.io/docs/latest/api-reference/metadata-api/permission/
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Apply the platform's Hasura metadata
  selfbase.platform.hasura_metadata:
    endpoint: "http://127.0.0.1:8080"
    admin_secret: "{{ hasura_admin_secret }}"
    # behind PgBouncer's transaction pooling: no prepared statements, also on a source created earlier
    source_settings:
      use_prepared_statements: false
    tables:
      # read-only for tenant users: their own tenant row
      - schema: platform
        name: tenants
        tenant_column: id
        tenant_roles: [user]
        tenant_operations: [select]
        columns: [id, slug, name, status, plan_code, branding, created_at]
        array_relationships:
          - name: domains
            table: {schema: platform, name: tenant_domains}
            column: tenant_id
      # full CRUD, isolated per tenant; tenant_id is set from the session and never updatable
      - schema: platform
        name: projects
        tenant_column: tenant_id
        tenant_roles: [user]
        columns: [id, tenant_id, name, description, created_at]
        configuration:
          custom_root_fields:
            select: projects
            insert_one: insertProject
        object_relationships:
          - name: tenant
            column: tenant_id
        permissions:
          user:
            # combined with the tenant filter by _and
            select:
              filter: {archived: {_eq: false}}
              allow_aggregations: true
              limit: 1000
            update:
              columns: [name, description]
          # a role outside the shorthand gets its permission as written
          support:
            select:
              columns: [id, tenant_id, name]
              filter: {}
  no_log: true

- name: Take the admin secret and the endpoint from HASURA_GRAPHQL_ADMIN_SECRET and HASURA_GRAPHQL_ENDPOINT
  selfbase.platform.hasura_metadata:
    tables:
      - schema: platform
        name: tenant_domains
        tenant_column: tenant_id
        tenant_roles: [user]
        tenant_operations: [select]
  environment:
    HASURA_GRAPHQL_ENDPOINT: "http://10.0.0.5:8080"
    HASURA_GRAPHQL_ADMIN_SECRET: "{{ vault_hasura_admin_secret }}"

- name: Untrack a table (only this one; auth's tables are never touched)
  selfbase.platform.hasura_metadata:
    admin_secret: "{{ hasura_admin_secret }}"
    state: absent
    tables:
      - schema: platform
        name: legacy_reports

- name: An operator action as a mutation, for the operator role only
  selfbase.platform.hasura_metadata:
    admin_secret: "{{ hasura_admin_secret }}"
    functions:
      - schema: platform
        name: operator_set_tenant_status
        exposed_as: mutation
        roles: [operator]
'''

RETURN = r'''
tables:
  description:
    - The owned tables after the run (in check mode, as they would be), in the order of O(tables), as Hasura's
      metadata table objects, normalised (permissions sorted by role, relationships by name, default values
      omitted). Untracked tables are left out, so it is empty after O(state=absent).
  returned: always
  type: list
  elements: dict
  sample:
    - table: {schema: platform, name: projects}
      object_relationships:
        - name: tenant
          using: {foreign_key_constraint_on: tenant_id}
      select_permissions:
        - role: user
          permission:
            columns: [created_at, description, id, name, tenant_id]
            filter: {tenant_id: {_eq: X-Hasura-Tenant-Id}}
      insert_permissions:
        - role: user
          permission:
            columns: [created_at, description, id, name]
            check: {tenant_id: {_eq: X-Hasura-Tenant-Id}}
            set: {tenant_id: X-Hasura-Tenant-Id}
rest_endpoints:
  description:
    - The owned REST endpoints after the run (in check mode, as they would be), in the order of O(rest_endpoints),
      each as C(endpoint) (Hasura's object) and C(query) (the text of its query in the collection).
  returned: always
  type: list
  elements: dict
  sample:
    - endpoint:
        name: admin-tenant
        url: admin/tenants/:id
        methods: [GET]
        definition: {query: {collection_name: selfbase_rest, query_name: admin-tenant}}
      query: "query ($id: uuid!) { platform_tenants_by_pk(id: $id) { id slug status } }"
functions:
  description:
    - The owned functions after the run (in check mode, as they would be), in the order of O(functions), as
      Hasura's metadata function objects, normalised (permissions sorted by role). Untracked functions are left out.
  returned: always
  type: list
  elements: dict
  sample:
    - function: {schema: platform, name: operator_set_tenant_status}
      configuration: {exposed_as: mutation}
      permissions:
        - role: operator
resource_version:
  description: The C(resource_version) of Hasura's metadata after the run (before it, in check mode).
  returned: always
  type: int
  sample: 12
diff:
  description: The owned tables before and after, keyed by C(schema.name), in diff mode (C(--diff)).
  returned: when diff mode is on
  type: dict
  sample:
    before: {}
    after: {"platform.projects": {"table": {"schema": "platform", "name": "projects"}}}
actions:
  description:
    - The owned actions after the run (in check mode, as they would be), in the order of O(actions), each as
      C(action) (Hasura's metadata action object, permissions sorted by role) and C(type) (the object type it
      returns, from the custom types).
  returned: always
  type: list
  elements: dict
  sample:
    - action:
        name: billingPortal
        definition: {handler: "http://10.0.0.21:8095/billing/portal", type: mutation, kind: synchronous,
                     output_type: BillingSession, arguments: [{name: return_url, type: String!}],
                     forward_client_headers: true, timeout: 30}
        permissions: [{role: user}]
      type: {name: BillingSession, fields: [{name: id, type: String!}, {name: url, type: String!}]}
source_settings:
  description: The owned connection settings of the source after the run (in check mode, as they would be).
  returned: always
  type: dict
  sample: {use_prepared_statements: false}
retried:
  description: Whether the write conflicted with a concurrent change once and was merged and sent again.
  returned: always
  type: bool
  sample: false
inconsistent_objects:
  description: The objects Hasura reports as inconsistent, when the module fails because of them.
  returned: failure
  type: list
  elements: dict
  sample:
    - type: table
      name: table platform.projects in source default
      reason: 'Inconsistent object: no such table/view exists in source: "platform.projects"'
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError, fail
from ansible_collections.selfbase.platform.plugins.module_utils.hasura import HasuraClient, hasura_argument_spec
from ansible_collections.selfbase.platform.plugins.module_utils.hasura_rest import METHODS
from ansible_collections.selfbase.platform.plugins.module_utils.hasura_tables import OPS, sync, wanted_tables


def main():
    argument_spec = hasura_argument_spec()
    argument_spec.update(
        source=dict(type='str', default='default'),
        state=dict(type='str', default='present', choices=['present', 'absent']),
        source_settings=dict(type='dict', options=dict(
            use_prepared_statements=dict(type='bool'),
            isolation_level=dict(type='str', choices=['read-committed', 'repeatable-read', 'serializable']),
        )),
        tenant_session_variable=dict(type='str', default='X-Hasura-Tenant-Id'),
        tables=dict(type='list', elements='dict', options=dict(
            schema=dict(type='str', default='public'),
            name=dict(type='str', required=True),
            tenant_column=dict(type='str'),
            tenant_roles=dict(type='list', elements='str'),
            tenant_operations=dict(type='list', elements='str', choices=list(OPS), default=list(OPS)),
            columns=dict(type='list', elements='str'),
            configuration=dict(type='dict'),
            object_relationships=dict(type='list', elements='dict', options=dict(
                name=dict(type='str', required=True),
                column=dict(type='str'),
                using=dict(type='dict'),
            ), mutually_exclusive=[('column', 'using')], required_one_of=[('column', 'using')]),
            array_relationships=dict(type='list', elements='dict', options=dict(
                name=dict(type='str', required=True),
                table=dict(type='raw'),
                column=dict(type='str'),
                using=dict(type='dict'),
            ), mutually_exclusive=[('table', 'using'), ('column', 'using')], required_one_of=[('column', 'using')],
                required_together=[('table', 'column')]),
            permissions=dict(type='dict'),
        )),
        functions=dict(type='list', elements='dict', options=dict(
            schema=dict(type='str', default='public'),
            name=dict(type='str', required=True),
            exposed_as=dict(type='str', choices=['query', 'mutation']),
            roles=dict(type='list', elements='str'),
        )),
        rest_collection=dict(type='str', default='selfbase_rest'),
        rest_endpoints=dict(type='list', elements='dict', options=dict(
            name=dict(type='str', required=True),
            url=dict(type='str'),
            methods=dict(type='list', elements='str', choices=list(METHODS), default=['GET']),
            query=dict(type='str'),
            comment=dict(type='str'),
        )),
        actions=dict(type='list', elements='dict', options=dict(
            name=dict(type='str', required=True),
            type=dict(type='str', choices=['mutation', 'query'], default='mutation'),
            handler=dict(type='str'),
            arguments=dict(type='list', elements='dict', options=dict(
                name=dict(type='str', required=True), type=dict(type='str', required=True))),
            output_type=dict(type='str'),
            output_fields=dict(type='list', elements='dict', options=dict(
                name=dict(type='str', required=True), type=dict(type='str', required=True))),
            roles=dict(type='list', elements='str', default=[]),
            forward_client_headers=dict(type='bool', default=False),
            timeout=dict(type='int', default=30),
            comment=dict(type='str'),
        )),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_one_of=[('tables', 'functions', 'rest_endpoints', 'actions')])
    try:
        wanted = wanted_tables(module.params)
    except InputError as e:
        fail(module, e)
    module.exit_json(**sync(module, HasuraClient(module), wanted))


if __name__ == '__main__':
    main()
