# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hasura tables as declarative state (the selfbase.platform.hasura_metadata module): the tables and tenant-scoped
permissions a task asks for, the canonical form of exported table objects, and the merge of the owned tables into
the exported metadata, which leaves every other object as it is."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import copy
import re

from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError
from ansible_collections.selfbase.platform.plugins.module_utils.hasura import HasuraConflict, HasuraError
from ansible_collections.selfbase.platform.plugins.module_utils.hasura_actions import (
    ACTION_KEY, check_types, desired_action, merge_actions, owned_actions)
from ansible_collections.selfbase.platform.plugins.module_utils.hasura_rest import (
    REST_KEY, desired_endpoint, merge_endpoints, owned_endpoints)

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


FUNCTION_KEY = 'function '


def kind_of(key):
    """The option a key of the owned objects comes from: tables, functions, rest_endpoints or actions."""
    for prefix, kind in ((FUNCTION_KEY, 'functions'), (REST_KEY, 'rest_endpoints'), (ACTION_KEY, 'actions')):
        if key.startswith(prefix):
            return kind
    return 'tables'


def desired_function(spec, index):
    """Validate one item of functions and build the metadata keys it owns."""
    ref = dict(schema=spec['schema'], name=spec['name'])
    field = 'functions[%d] (%s)' % (index, key_of(ref))
    entry = dict(function=ref)
    if spec['exposed_as'] is not None:
        entry['configuration'] = dict(exposed_as=spec['exposed_as'])
    roles = spec['roles']
    if roles is not None:
        if 'admin' in roles:
            raise InputError('%s.roles: admin cannot be given permissions, it has them all' % field)
        if len(set(roles)) != len(roles):
            raise InputError('%s.roles lists a value twice' % field)
        entry['permissions'] = [dict(role=r) for r in roles]
    return entry


def normalise_function(entry):
    """A function object of the metadata in a canonical form, to compare and to show."""
    if entry is None:
        return None
    out = dict((k, v) for k, v in entry.items() if v not in (None, [], {}))
    out['function'] = table_ref(entry['function'], 'function')
    if 'configuration' in out:
        out['configuration'] = dict((k, v) for k, v in out['configuration'].items() if v not in (None, {}, []))
        if not out['configuration']:
            del out['configuration']
    if 'permissions' in out:
        out['permissions'] = sorted((dict(p) for p in out['permissions']), key=lambda p: p.get('role', ''))
    return out


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


# Hasura's defaults when a stored source leaves them out (server/src-lib/Hasura/Backends/Postgres/Connection/
# Settings.hs, FromJSON PostgresSourceConnInfo).
SOURCE_SETTING_DEFAULTS = {'use_prepared_statements': False, 'isolation_level': 'read-committed'}


def source_settings(metadata, source_name, names):
    """{name: value} of the listed connection settings the source has stored (Hasura's default when absent)."""
    info = (find_source(metadata, source_name).get('configuration') or {}).get('connection_info') or {}
    return dict((name, info.get(name, SOURCE_SETTING_DEFAULTS[name])) for name in names)


def owned_tables(metadata, source_name, keys):
    """{key: normalised object} of the tracked tables (schema.name) and functions ('function schema.name') among
    keys."""
    out = {}
    source = find_source(metadata, source_name)
    for entry in source.get('tables') or []:
        key = exported_key(entry)
        if key in keys:
            out[key] = normalise_table(entry)
    for entry in source.get('functions') or []:
        key = FUNCTION_KEY + exported_key(dict(table=entry.get('function')))
        if key in keys:
            out[key] = normalise_function(entry)
    out.update(owned_endpoints(metadata, keys))
    out.update(owned_actions(metadata, keys))
    return out


def merge(metadata, source_name, wanted, state, settings=None):
    """A copy of the metadata with the owned tables, functions and connection settings merged in; every other
    object is left as exported."""
    metadata = copy.deepcopy(metadata)
    source = find_source(metadata, source_name)
    if settings:
        source.setdefault('configuration', {}).setdefault('connection_info', {}).update(settings)
    for kind, prefix in (('tables', ''), ('functions', FUNCTION_KEY)):
        owned = dict((k, v) for k, v in wanted.items() if kind_of(k) == kind)
        ref_key = kind[:-1]
        entries = []
        for entry in source.get(kind) or []:
            key = prefix + exported_key(dict(table=entry.get(ref_key)))
            if key not in owned:
                entries.append(entry)
            elif state == 'present':
                entries.append(merge_table(entry, owned.pop(key)))
        if state == 'present':
            entries.extend(merge_table({ref_key: desired[ref_key]}, desired) for desired in owned.values())
        if entries or kind == 'tables' or kind in source:
            source[kind] = entries
    merge_endpoints(metadata, wanted, state)
    merge_actions(metadata, wanted, state)
    return metadata


def merge_table(entry, desired):
    """A table or function object with the keys the task owns set (an empty value removes the key)."""
    entry = dict(entry)
    for name, value in desired.items():
        if name in ('table', 'function'):
            continue
        if name == 'configuration' and 'function' in desired:
            value = dict(entry.get('configuration') or {}, **value)  # a function's: only exposed_as is owned
        if value in ([], {}):
            entry.pop(name, None)
        else:
            entry[name] = value
    return entry


def describe(objects):
    return '; '.join('%s: %s' % (o.get('name') or o.get('type') or o.get('definition'), o.get('reason'))
                     if isinstance(o, dict) else str(o) for o in objects)


def wanted_tables(p):
    """{key: object} of the tables (schema.name) and functions ('function schema.name') the task owns, validated
    before Hasura is contacted. Raises InputError."""
    if not re.match(r'(?i)^x-hasura-[a-z0-9_-]+$', p['tenant_session_variable']):
        raise InputError('tenant_session_variable must be a Hasura session variable (X-Hasura-...), got %r'
                         % p['tenant_session_variable'])
    wanted = {}
    for kind, ref_key, prefix, build in (('tables', 'table', '', lambda spec, i: desired_table(
            spec, i, p['tenant_session_variable'])), ('functions', 'function', FUNCTION_KEY, desired_function)):
        for i, spec in enumerate(p.get(kind) or []):
            if p['state'] == 'absent':
                entry = {ref_key: dict(schema=spec['schema'], name=spec['name'])}
            else:
                entry = build(spec, i)
            key = prefix + key_of(entry[ref_key])
            if key in wanted:
                raise InputError('%s[%d] (%s) is listed twice' % (kind, i, key_of(entry[ref_key])))
            wanted[key] = entry
    for i, spec in enumerate(p.get('rest_endpoints') or []):
        if p['state'] == 'absent':
            ref = dict(collection_name=p['rest_collection'], query_name=spec['name'])
            entry = dict(endpoint=dict(name=spec['name'], definition=dict(query=ref)), query=None)
        else:
            entry = desired_endpoint(spec, i, p['rest_collection'])
        if REST_KEY + spec['name'] in wanted:
            raise InputError('rest_endpoints[%d] (%s) is listed twice' % (i, spec['name']))
        wanted[REST_KEY + spec['name']] = entry
    for i, spec in enumerate(p.get('actions') or []):
        entry = dict(action=dict(name=spec['name'])) if p['state'] == 'absent' else desired_action(spec, i)
        if ACTION_KEY + spec['name'] in wanted:
            raise InputError('actions[%d] (%s) is listed twice' % (i, spec['name']))
        wanted[ACTION_KEY + spec['name']] = entry
    check_types(wanted)
    return wanted


def sync(module, client, wanted):
    """Merge the owned tables into Hasura's metadata (one retry after a concurrent change); the module's result."""
    p = module.params
    # only the connection settings the task gives are owned
    settings = dict((k, v) for k, v in (p.get('source_settings') or {}).items() if v is not None)
    result = dict(changed=False, retried=False)
    written = False
    try:
        for attempt in (1, 2):
            version, metadata = client.export_metadata()
            new_metadata = merge(metadata, p['source'], dict(wanted), p['state'], settings)
            before = owned_tables(metadata, p['source'], wanted)
            after = owned_tables(new_metadata, p['source'], wanted)
            settings_before = source_settings(metadata, p['source'], settings)
            result['changed'] = before != after or settings_before != settings
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
            stored = source_settings(metadata, p['source'], settings)
            if stored != settings:
                module.warn('Hasura stored the source\'s connection settings differently from what was sent: %s'
                            % stored)
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
    for kind in ('tables', 'functions', 'rest_endpoints', 'actions'):
        result[kind] = [after[k] for k in wanted if k in after and kind_of(k) == kind]
    result['source_settings'] = dict(settings_before, **settings)
    if module._diff:
        result['diff'] = dict(before=before, after=after)
        if settings:
            result['diff']['before']['source_settings'] = settings_before
            result['diff']['after']['source_settings'] = result['source_settings']
    return result
