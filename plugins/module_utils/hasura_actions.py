# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hasura Actions as declarative state (the actions option of selfbase.platform.hasura_metadata): each action is a
GraphQL query or mutation that Hasura answers by calling an HTTP handler, with the object type of its output kept
in the metadata's custom types."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import copy
import re

from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError

ACTION_KEY = 'action '
_NAME = re.compile(r'^[_A-Za-z][_0-9A-Za-z]*$')
# a GraphQL type reference: a named type, optionally in lists, each level optionally non-null
_TYPE = re.compile(r'^(\[)*[_A-Za-z][_0-9A-Za-z]*!?(\]!?)*$')


def _type(value, field):
    if not isinstance(value, str) or not _TYPE.match(value) or value.count('[') != value.count(']'):
        raise InputError('%s: a GraphQL type such as String! or [uuid!], got %r' % (field, value))
    return value


def _fields(items, field):
    out, seen = [], set()
    for i, item in enumerate(items or []):
        where = '%s[%d]' % (field, i)
        if not _NAME.match(item.get('name') or ''):
            raise InputError('%s.name: a GraphQL name (letters, digits and _), got %r' % (where, item.get('name')))
        if item['name'] in seen:
            raise InputError('%s.name: %s is listed twice' % (where, item['name']))
        seen.add(item['name'])
        out.append(dict(name=item['name'], type=_type(item.get('type'), where + '.type')))
    return out


def desired_action(spec, index):
    """Validate one item of actions: {'action': metadata action, 'type': its output object type}."""
    field = 'actions[%d] (%s)' % (index, spec['name'])
    if not _NAME.match(spec['name']):
        raise InputError('%s.name: a GraphQL name (letters, digits and _)' % field)
    for key in ('handler', 'output_type', 'output_fields'):
        if not spec.get(key):
            raise InputError('%s.%s is required with state present' % (field, key))
    if not re.match(r'^(https?://[^/\s]+|\{\{[A-Za-z_][A-Za-z0-9_]*\}\})', spec['handler']):
        raise InputError('%s.handler: an http(s) URL, or one that starts with {{ENV_VAR}} (read from Hasura\'s '
                         'environment), got %r' % (field, spec['handler']))
    if not _NAME.match(spec['output_type']):
        raise InputError('%s.output_type: the name of an object type, got %r' % (field, spec['output_type']))
    definition = dict(handler=spec['handler'], type=spec['type'], output_type=spec['output_type'],
                      arguments=_fields(spec.get('arguments'), field + '.arguments'),
                      forward_client_headers=spec['forward_client_headers'], timeout=spec['timeout'])
    if spec['type'] == 'mutation':
        definition['kind'] = 'synchronous'
    action = dict(name=spec['name'], definition=definition,
                  permissions=[dict(role=r) for r in sorted(set(spec.get('roles') or []))])
    if spec.get('comment'):
        action['comment'] = spec['comment']
    output = dict(name=spec['output_type'], fields=_fields(spec['output_fields'], field + '.output_fields'))
    return dict(action=action, type=output)


def check_types(wanted):
    """Two owned actions that return the same type must define it alike."""
    types = {}
    for key, entry in sorted(wanted.items()):
        if not key.startswith(ACTION_KEY) or not entry.get('type'):
            continue
        name = entry['type']['name']
        if name in types and types[name][1] != entry['type']:
            raise InputError('actions: %s and %s define the output type %s differently'
                             % (types[name][0], key[len(ACTION_KEY):], name))
        types[name] = (key[len(ACTION_KEY):], entry['type'])


def _objects(metadata):
    return dict((o.get('name'), o) for o in ((metadata.get('custom_types') or {}).get('objects') or []))


def _normal(action):
    action = copy.deepcopy(dict((k, v) for k, v in action.items() if v not in (None, '')))
    definition = action.get('definition') or {}
    definition.setdefault('arguments', [])
    definition.setdefault('forward_client_headers', False)
    action['permissions'] = sorted(action.get('permissions') or [], key=lambda p: p.get('role'))
    return action


def owned_actions(metadata, keys):
    """{key: {'action', 'type'}} of the stored actions among keys, with the object type each returns."""
    out = {}
    objects = _objects(metadata)
    for action in metadata.get('actions') or []:
        key = ACTION_KEY + str(action.get('name'))
        if key in keys:
            output = objects.get((action.get('definition') or {}).get('output_type'))
            out[key] = dict(action=_normal(action), type=output and dict(
                name=output.get('name'), fields=[dict(name=f.get('name'), type=f.get('type'))
                                                 for f in output.get('fields') or []]))
    return out


def merge_actions(metadata, wanted, state):
    """Set the owned actions and their output types in metadata (in place); every other action and type is left as
    it is. A type that no action uses any more is left too: another action or a remote schema may use it."""
    owned = dict((k, v) for k, v in wanted.items() if k.startswith(ACTION_KEY))
    if not owned:
        return
    names = set(k[len(ACTION_KEY):] for k in owned)
    actions = [a for a in metadata.get('actions') or [] if a.get('name') not in names]
    if state == 'present':
        actions.extend(copy.deepcopy(entry['action']) for entry in owned.values())
        types = metadata.setdefault('custom_types', {})
        wanted_types = dict((e['type']['name'], e['type']) for e in owned.values())
        objects = [o for o in types.get('objects') or [] if o.get('name') not in wanted_types]
        types['objects'] = objects + [copy.deepcopy(wanted_types[name]) for name in sorted(wanted_types)]
    metadata['actions'] = actions
