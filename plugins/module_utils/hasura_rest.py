# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hasura's RESTified endpoints as declarative state (the rest_endpoints option of selfbase.platform.hasura_metadata):
each endpoint is a GraphQL operation kept in a query collection, served at /api/rest/<url> with the caller's role."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import copy
import re

from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError

REST_KEY = 'rest '
METHODS = ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')
_SEGMENT = re.compile(r'^(:?[A-Za-z_][A-Za-z0-9_-]*|[A-Za-z0-9_.-]+)$')


def query_variables(query):
    return set(re.findall(r'\$([A-Za-z_][A-Za-z0-9_]*)\s*:', query))


def desired_endpoint(spec, index, collection):
    """Validate one item of rest_endpoints: {'endpoint': metadata object, 'query': GraphQL text}."""
    field = 'rest_endpoints[%d] (%s)' % (index, spec['name'])
    if not re.match(r'^[A-Za-z0-9_-]+$', spec['name']):
        raise InputError('%s.name: letters, digits, _ and - only' % field)
    for key in ('url', 'query'):
        if not spec.get(key):
            raise InputError('%s.%s is required with state present' % (field, key))
    segments = spec['url'].split('/')
    if not all(_SEGMENT.match(s) for s in segments):
        raise InputError('%s.url: segments of letters, digits, _, . and -, or :variable, with no leading, trailing '
                         'or double slash; got %r' % (field, spec['url']))
    query = spec['query'].strip()
    if len(re.findall(r'^\s*(query|mutation|subscription)\b', query, re.M)) != 1:
        raise InputError('%s.query: must be one named or anonymous query or mutation' % field)
    missing = sorted(set(s[1:] for s in segments if s.startswith(':')) - query_variables(query))
    if missing:
        raise InputError('%s.url: variable %s is not a variable of the query' % (field, ', '.join(missing)))
    if query.startswith('mutation') and 'GET' in spec['methods']:
        raise InputError('%s.methods: a mutation is not served over GET' % field)
    endpoint = dict(name=spec['name'], url=spec['url'], methods=sorted(set(spec['methods'])),
                    definition=dict(query=dict(collection_name=collection, query_name=spec['name'])))
    if spec.get('comment'):
        endpoint['comment'] = spec['comment']
    return dict(endpoint=endpoint, query=query)


def _collection(metadata, name):
    for c in metadata.get('query_collections') or []:
        if c.get('name') == name:
            return c
    return None


def owned_endpoints(metadata, keys):
    """{key: {'endpoint', 'query'}} of the stored endpoints among keys, with the text of their query."""
    out = {}
    for endpoint in metadata.get('rest_endpoints') or []:
        key = REST_KEY + str(endpoint.get('name'))
        if key not in keys:
            continue
        ref = (endpoint.get('definition') or {}).get('query') or {}
        collection = _collection(metadata, ref.get('collection_name')) or {}
        queries = ((collection.get('definition') or {}).get('queries')) or []
        text = next((q.get('query') for q in queries if q.get('name') == ref.get('query_name')), None)
        endpoint = dict((k, v) for k, v in endpoint.items() if v not in (None, ''))
        endpoint['methods'] = sorted(endpoint.get('methods') or [])
        out[key] = dict(endpoint=endpoint, query=text.strip() if isinstance(text, str) else text)
    return out


def merge_endpoints(metadata, wanted, state):
    """Set the owned endpoints and their queries in metadata (in place); every other one is left as it is."""
    owned = dict((k, v) for k, v in wanted.items() if k.startswith(REST_KEY))
    if not owned:
        return
    names = set(k[len(REST_KEY):] for k in owned)
    endpoints = [e for e in metadata.get('rest_endpoints') or [] if e.get('name') not in names]
    by_collection = {}
    for entry in owned.values():
        ref = entry['endpoint']['definition']['query']
        by_collection.setdefault(ref['collection_name'], {})[ref['query_name']] = entry['query']
    for name, queries in by_collection.items():
        collection = _collection(metadata, name)
        if collection is None:
            if state != 'present':
                continue
            collection = dict(name=name, definition=dict(queries=[]))
            metadata.setdefault('query_collections', []).append(collection)
        kept = [q for q in collection['definition'].get('queries') or [] if q.get('name') not in queries]
        if state == 'present':
            kept.extend(dict(name=q, query=text) for q, text in sorted(queries.items()))
        collection['definition']['queries'] = kept
    if state == 'present':
        endpoints.extend(copy.deepcopy(entry['endpoint']) for entry in owned.values())
    metadata['rest_endpoints'] = endpoints
