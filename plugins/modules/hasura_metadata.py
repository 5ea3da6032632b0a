#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: hasura_metadata
short_description: Track tables, relationships and tenant permissions in Hasura
version_added: 0.1.0
description:
  - Declares which tables of one Hasura source are tracked, with their configuration, relationships and per-role
    permissions, including a tenant-scoped shorthand that isolates tenants from each other.
  - The module owns only the tables listed in O(tables). Every other object of the metadata (other tables, such as
    the ones nhost/auth tracks in schema C(auth), other sources, actions, remote schemas, ...) is sent back exactly as
    Hasura exported it.
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
  tenant_session_variable:
    description:
      - Session variable that carries the tenant of the request, used by the tenant-scoped shorthand. nhost/auth
        puts it into the JWT claims through E(AUTH_JWT_CUSTOM_CLAIMS).
      - Session variables are case-insensitive in Hasura; the value is written as given.
    type: str
    default: X-Hasura-Tenant-Id
  tables:
    description:
      - The tables this task owns. A table may be listed once.
    type: list
    elements: dict
    required: true
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
extends_documentation_fragment:
  - selfbase.platform.hasura
attributes:
  check_mode:
    support: full
    description: Exports the metadata, reports what would change, with the diff, and writes nothing.
  diff_mode:
    support: full
    description:
      - Shows the owned tables before and after, normalised, keyed by C(schema.name); a table that is not tracked
        is absent from that side.
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

import copy
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError
from ansible_collections.selfbase.platform.plugins.module_utils.hasura import (
    HasuraClient, HasuraConflict, HasuraError, hasura_argument_spec)

OPS = ('select', 'insert', 'update', 'delete')
PERMISSION_KEYS = {
    'select': ('columns', 'filter', 'limit', 'allow_aggregations', 'computed_fields', 'query_root_fields',
               'subscription_root_fields'),
    'insert': ('columns', 'check', 'set', 'backend_only', 'validate_input'),
    'update': ('columns', 'filter', 'check', 'set', 'backend_only', 'validate_input'),
    'delete': ('filter', 'backend_only', 'validate_input'),
}
PERMISSION_REQUIRED = {'select': ('columns', 'filter'), 'insert': ('check',), 'update': ('columns', 'filter'),
                       'delete': ('filter',)}
# values Hasura treats as absent and leaves out of its export
PERMISSION_DEFAULTS = {'allow_aggregations': False, 'backend_only': False, 'computed_fields': [], 'set': {}}


def table_ref(value, field):
    """{'schema', 'name'} from a dict or a 'schema.name' / 'name' string."""
    if isinstance(value, dict) and isinstance(value.get('name'), str) and set(value) <= {'schema', 'name'}:
        return dict(schema=value.get('schema') or 'public', name=value['name'])
    parts = value.split('.') if isinstance(value, str) else []
    if len(parts) in (1, 2) and all(parts):
        return dict(schema=parts[0] if len(parts) == 2 else 'public', name=parts[-1])
    raise InputError('%s must be a dict with schema and name, or a string schema.name, got %r' % (field, value))


def key_of(ref):
    return '%s.%s' % (ref['schema'], ref['name'])


def exported_key(entry):
    """schema.name of a table object as exported; never fails on shapes of other backends."""
    try:
        return key_of(table_ref(entry.get('table'), 'table'))
    except InputError:
        return repr(entry.get('table'))


def tenant_and(condition, given):
    return condition if not given else {'_and': [condition, given]}


def check_permission(op, perm, field):
    if not isinstance(perm, dict):
        raise InputError('%s must be a dict (a Hasura %s permission), got %r' % (field, op, perm))
    unknown = sorted(set(perm) - set(PERMISSION_KEYS[op]))
    if unknown:
        raise InputError('%s: unknown key(s) %s; a %s permission takes %s'
                         % (field, ', '.join(unknown), op, ', '.join(PERMISSION_KEYS[op])))
    cols = perm.get('columns')
    if cols is not None and cols != '*' and not (isinstance(cols, list) and all(isinstance(c, str) for c in cols)):
        raise InputError('%s.columns must be a list of column names or "*", got %r' % (field, cols))
    for key in ('filter', 'check', 'set'):
        if key in perm and not isinstance(perm[key], dict):
            raise InputError('%s.%s must be a dict, got %r' % (field, key, perm[key]))


def tenant_permission(op, spec, var, given, field):
    """The tenant-scoped permission of one role and operation, refined by the explicit one (given)."""
    col = spec['tenant_column']
    condition = {col: {'_eq': var}}
    perm = dict((k, v) for k, v in given.items() if k not in ('columns', 'filter', 'check', 'set'))
    if op != 'delete':
        cols = given['columns'] if 'columns' in given else spec['columns']
        if op == 'select':
            cols = '*' if cols is None else cols
        elif cols is None:
            raise InputError('%s: columns are required for the tenant-scoped %s permission; set columns on the table '
                             'or %s.columns, or leave %s out of tenant_operations' % (field, op, field, op))
        elif 'columns' in given and (cols == '*' or col in cols):
            raise InputError('%s.columns must list the columns explicitly and must not contain the tenant column %s'
                             % (field, col))
        else:
            cols = [c for c in cols if c != col]
        perm['columns'] = cols
    if op != 'insert':
        perm['filter'] = tenant_and(condition, given.get('filter'))
    if op == 'insert' or given.get('check'):
        perm['check'] = tenant_and(condition, given.get('check'))
    preset = dict(given.get('set') or {})
    if col in preset and not (op == 'insert' and preset[col] == var):
        raise InputError('%s.set must not set the tenant column %s' % (field, col))
    if op == 'insert':
        preset[col] = var
    if preset:
        perm['set'] = preset
    return perm


def desired_permissions(spec, var, field):
    """{op: [{'role', 'permission'}]} for the table, or None when the task leaves permissions alone."""
    given = spec['permissions']
    roles = spec['tenant_roles'] or []
    if given is None and not spec['tenant_roles']:
        return None
    given = given or {}
    lists = dict((op, []) for op in OPS)
    for role in sorted(set(roles) | set(given)):
        rfield = '%s.permissions.%s' % (field, role)
        ops = given.get(role)
        if ops is None:
            ops = {}
        if not isinstance(ops, dict):
            raise InputError('%s must be a dict of operations (select, insert, update, delete), got %r' % (rfield, ops))
        for op in ops:
            if op not in OPS:
                raise InputError('%s.%s: unknown operation; use select, insert, update or delete' % (rfield, op))
            check_permission(op, ops[op], '%s.%s' % (rfield, op))
        role_ops = set(ops) | (set(spec['tenant_operations']) if role in roles else set())
        for op in OPS:
            if op not in role_ops:
                continue
            pfield = '%s.%s' % (rfield, op)
            if role in roles:
                perm = tenant_permission(op, spec, var, ops.get(op) or {}, pfield)
            else:
                perm = ops[op]
                missing = [k for k in PERMISSION_REQUIRED[op] if k not in perm]
                if missing:
                    raise InputError('%s: missing %s' % (pfield, ', '.join(missing)))
            lists[op].append(dict(role=role, permission=perm))
    return lists


def desired_table(spec, index, var):
    """Validate one item of tables and build the metadata keys it owns."""
    ref = dict(schema=spec['schema'], name=spec['name'])
    field = 'tables[%d] (%s)' % (index, key_of(ref))
    for role in spec['tenant_roles'] or []:
        if role == 'admin':
            raise InputError('%s.tenant_roles: admin cannot be given permissions, it has them all' % field)
    if spec['tenant_roles'] and not spec['tenant_column']:
        raise InputError('%s.tenant_column is required when tenant_roles is given' % field)
    if '*' in (spec['columns'] or []):
        raise InputError('%s.columns must list column names; leave it out for all columns' % field)
    for key in ('tenant_roles', 'columns', 'tenant_operations'):
        if spec[key] and len(set(spec[key])) != len(spec[key]):
            raise InputError('%s.%s lists a value twice' % (field, key))
    entry = dict(table=ref)
    if spec['configuration'] is not None:
        entry['configuration'] = spec['configuration']
    names = set()
    for kind in ('object_relationships', 'array_relationships'):
        rels = spec[kind]
        if rels is None:
            continue
        entry[kind] = []
        for i, rel in enumerate(rels):
            rfield = '%s.%s[%d]' % (field, kind, i)
            if rel['name'] in names:
                raise InputError('%s.name: %s is used twice in this table' % (rfield, rel['name']))
            names.add(rel['name'])
            if rel['using'] is not None:
                using = rel['using']
            elif kind == 'object_relationships':
                using = dict(foreign_key_constraint_on=rel['column'])
            else:
                using = dict(foreign_key_constraint_on=dict(
                    table=table_ref(rel['table'], rfield + '.table'), column=rel['column']))
            entry[kind].append(dict(name=rel['name'], using=using))
    perms = desired_permissions(spec, var, field)
    if perms is not None:
        for op in OPS:
            entry[op + '_permissions'] = perms[op]
    return entry


def normalise_config(config):
    config = dict(config)
    # Hasura exports custom names both as custom_column_names and as column_config
    columns = copy.deepcopy(config.pop('column_config', None) or {})
    for column, custom in (config.pop('custom_column_names', None) or {}).items():
        columns.setdefault(column, {}).setdefault('custom_name', custom)
    config['column_config'] = dict((c, v) for c, v in columns.items() if v)
    return dict((k, v) for k, v in config.items() if v not in (None, {}, []))


def normalise_using(using):
    using = copy.deepcopy(using)
    fk = using.get('foreign_key_constraint_on')
    if isinstance(fk, dict) and 'table' in fk:
        fk['table'] = table_ref(fk['table'], 'foreign_key_constraint_on.table')
    manual = using.get('manual_configuration')
    if isinstance(manual, dict) and 'remote_table' in manual:
        manual['remote_table'] = table_ref(manual['remote_table'], 'manual_configuration.remote_table')
    return using


def normalise_permission(perm):
    out = {}
    for key, value in perm.items():
        if value is None or (key in PERMISSION_DEFAULTS and value == PERMISSION_DEFAULTS[key]):
            continue
        if key in ('columns', 'computed_fields') and isinstance(value, list):
            value = sorted(value)
        out[key] = value
    return out


def normalise_table(entry):
    """A table object of the metadata in a canonical form, to compare and to show."""
    if entry is None:
        return None
    out = {}
    for key, value in entry.items():
        if key == 'table':
            value = table_ref(value, 'table')
        elif key == 'configuration' and isinstance(value, dict):
            value = normalise_config(value)
        elif key in ('object_relationships', 'array_relationships') and isinstance(value, list):
            value = sorted(
                (dict(dict((k, v) for k, v in rel.items() if v is not None), using=normalise_using(rel.get('using', {})))
                 for rel in value), key=lambda r: r.get('name', ''))
        elif key.endswith('_permissions') and isinstance(value, list):
            value = sorted(
                (dict(dict((k, v) for k, v in p.items() if v is not None),
                      permission=normalise_permission(p.get('permission') or {})) for p in value),
                key=lambda p: p.get('role', ''))
        if key != 'table' and value in (None, [], {}, False):
            continue
        out[key] = value
    return out


def find_source(metadata, source_name):
    for source in metadata.get('sources') or []:
        if source.get('name') == source_name:
            return source
    raise HasuraError('source %s is not in Hasura\'s metadata (sources: %s); add it first, for example with '
                      'HASURA_GRAPHQL_DATABASE_URL'
                      % (source_name, ', '.join(s.get('name', '?') for s in metadata.get('sources') or []) or 'none'))


def owned_tables(metadata, source_name, keys):
    """{schema.name: normalised table object} of the tracked tables among keys."""
    out = {}
    for entry in find_source(metadata, source_name).get('tables') or []:
        key = exported_key(entry)
        if key in keys:
            out[key] = normalise_table(entry)
    return out


def merge(metadata, source_name, wanted, state):
    """A copy of the metadata with the owned tables merged in; every other object is left as exported."""
    metadata = copy.deepcopy(metadata)
    source = find_source(metadata, source_name)
    tables = []
    for entry in source.get('tables') or []:
        key = exported_key(entry)
        if key not in wanted:
            tables.append(entry)
        elif state == 'present':
            tables.append(merge_table(entry, wanted.pop(key)))
    if state == 'present':
        tables.extend(merge_table(dict(table=desired['table']), desired) for desired in wanted.values())
    source['tables'] = tables
    return metadata


def merge_table(entry, desired):
    entry = dict(entry)
    for name, value in desired.items():
        if name == 'table':
            continue
        if value in ([], {}):
            entry.pop(name, None)
        else:
            entry[name] = value
    return entry


def describe(objects):
    return '; '.join('%s: %s' % (o.get('name') or o.get('type') or o.get('definition'), o.get('reason'))
                     if isinstance(o, dict) else str(o) for o in objects)


def main():
    argument_spec = hasura_argument_spec()
    argument_spec.update(
        source=dict(type='str', default='default'),
        state=dict(type='str', default='present', choices=['present', 'absent']),
        tenant_session_variable=dict(type='str', default='X-Hasura-Tenant-Id'),
        tables=dict(type='list', elements='dict', required=True, options=dict(
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
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params

    # everything is validated before Hasura is contacted
    wanted = {}
    try:
        if not re.match(r'(?i)^x-hasura-[a-z0-9_-]+$', p['tenant_session_variable']):
            raise InputError('tenant_session_variable must be a Hasura session variable (X-Hasura-...), got %r'
                             % p['tenant_session_variable'])
        for i, spec in enumerate(p['tables']):
            if p['state'] == 'absent':
                entry = dict(table=dict(schema=spec['schema'], name=spec['name']))
            else:
                entry = desired_table(spec, i, p['tenant_session_variable'])
            key = key_of(entry['table'])
            if key in wanted:
                raise InputError('tables[%d] (%s) is listed twice' % (i, key))
            wanted[key] = entry
    except InputError as e:
        module.fail_json(msg=str(e))

    client = HasuraClient(module)
    result = dict(changed=False, retried=False)
    written = False
    try:
        for attempt in (1, 2):
            version, metadata = client.export_metadata()
            new_metadata = merge(metadata, p['source'], dict(wanted), p['state'])
            before = owned_tables(metadata, p['source'], wanted)
            after = owned_tables(new_metadata, p['source'], wanted)
            result['changed'] = before != after
            if not result['changed'] or module.check_mode:
                break
            try:
                client.replace_metadata(new_metadata, version)
                written = True
                break
            except HasuraConflict as e:
                if attempt == 2:
                    module.fail_json(msg='Hasura\'s metadata was changed by someone else while this module merged it, '
                                         'twice in a row (%s); nothing was written, run the task again' % e,
                                     changed=False, retried=True)
                result['retried'] = True
            except HasuraError as e:
                if e.code == 'unexpected' and isinstance(e.internal, list):
                    module.fail_json(msg='Hasura refused the new metadata because it would be inconsistent; nothing '
                                         'was written: %s' % describe(e.internal),
                                     inconsistent_objects=e.internal, changed=False, retried=result['retried'])
                if e.code == 'unexpected':
                    # Hasura drops "internal" unless HASURA_GRAPHQL_ADMIN_INTERNAL_ERRORS (or dev mode) is on
                    module.fail_json(msg='Hasura refused the new metadata (%s) and gave no detail of the objects; '
                                         'nothing was written. Set HASURA_GRAPHQL_ADMIN_INTERNAL_ERRORS=true (the '
                                         'selfbase.platform.hasura role does) to see which objects are inconsistent'
                                         % e, changed=False, retried=result['retried'])
                raise
        if written:
            # read back what Hasura stored
            intended = after
            version, metadata = client.export_metadata()
            after = owned_tables(metadata, p['source'], wanted)
            if after != intended:
                module.warn('Hasura stored these owned tables differently from what was sent, so the next run may '
                            'report a change again: %s'
                            % ', '.join(sorted(k for k in set(after) | set(intended) if after.get(k) != intended.get(k))))
        inconsistent = client.inconsistent_objects()
    except (HasuraError, InputError) as e:
        module.fail_json(msg=str(e), changed=written, retried=result['retried'])
    if inconsistent:
        module.fail_json(msg='Hasura reports inconsistent metadata after this run%s: %s'
                             % (' (the metadata was written)' if written else '', describe(inconsistent)),
                         inconsistent_objects=inconsistent, changed=written, retried=result['retried'])

    result['resource_version'] = version
    result['tables'] = [after[k] for k in wanted if k in after]
    if module._diff:
        result['diff'] = dict(before=before, after=after)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
