# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small client for Hasura's metadata API (POST /v1/metadata), with the
connection options of the selfbase.platform.hasura doc fragment."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json

from ansible.module_utils.basic import env_fallback
from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.urls import fetch_url
from ansible_collections.selfbase.platform.plugins.module_utils.errors import ServiceError


def hasura_argument_spec():
    """Options documented in the selfbase.platform.hasura doc fragment."""
    return dict(
        endpoint=dict(type='str', default='http://127.0.0.1:8080', fallback=(env_fallback, ['HASURA_GRAPHQL_ENDPOINT'])),
        admin_secret=dict(type='str', no_log=True, fallback=(env_fallback, ['HASURA_GRAPHQL_ADMIN_SECRET'])),
        validate_certs=dict(type='bool', default=True),
        timeout=dict(type='int', default=30),
    )


class HasuraError(ServiceError):
    """An answer of the metadata API that is not a success, or no answer at all."""

    def __init__(self, msg, status=None, code=None, internal=None):
        super(HasuraError, self).__init__(msg)
        self.status = status
        self.code = code
        self.internal = internal


class HasuraConflict(HasuraError):
    """409: the resource_version sent is stale, someone changed the metadata meanwhile."""


class HasuraClient(object):

    def __init__(self, module):
        self.module = module
        endpoint = module.params['endpoint'].rstrip('/')
        if not endpoint.startswith(('http://', 'https://')):
            module.fail_json(msg='endpoint must be an http:// or https:// URL, got %r' % endpoint)
        self.url = endpoint + '/v1/metadata'

    def call(self, body):
        headers = {'Content-Type': 'application/json'}
        if self.module.params['admin_secret']:
            headers['X-Hasura-Admin-Secret'] = self.module.params['admin_secret']
        resp, info = fetch_url(self.module, self.url, data=json.dumps(body), headers=headers, method='POST',
                               timeout=self.module.params['timeout'])
        status = info.get('status', -1)
        if status is None or status < 0:
            raise HasuraError('cannot reach Hasura at %s: %s' % (self.url, info.get('msg')))
        # on HTTP errors fetch_url has already read the body into info
        raw = info['body'] if 'body' in info else (resp.read() if resp is not None else b'')
        try:
            data = json.loads(to_text(raw or b'null'))
        except ValueError:
            raise HasuraError('%s: Hasura at %s answered HTTP %s with a body that is not JSON: %s'
                              % (body['type'], self.url, status, to_text(raw)[:200]), status)
        if 200 <= status < 300:
            return data
        data = data if isinstance(data, dict) else {}
        code, error = data.get('code'), data.get('error')
        if status == 409 or code == 'conflict':
            raise HasuraConflict('%s: %s' % (body['type'], error), status, code)
        if status in (401, 403) or code == 'access-denied':
            raise HasuraError('%s: Hasura refused the request (HTTP %s, %s: %s); check admin_secret '
                              '(or HASURA_GRAPHQL_ADMIN_SECRET)' % (body['type'], status, code, error), status, code)
        raise HasuraError('%s: Hasura answered HTTP %s (%s at %s): %s'
                          % (body['type'], status, code, data.get('path'), error), status, code, data.get('internal'))

    def export_metadata(self):
        """The metadata and its resource_version."""
        data = self.call({'type': 'export_metadata', 'version': 2, 'args': {}})
        if not isinstance(data, dict) or 'resource_version' not in data or not isinstance(data.get('metadata'), dict):
            raise HasuraError('export_metadata: the answer has no resource_version and metadata; '
                              'Hasura GraphQL Engine v2.0 or later is required')
        return data['resource_version'], data['metadata']

    def replace_metadata(self, metadata, resource_version):
        """Replace the whole metadata, only if it is still at resource_version (else HasuraConflict).

        Inconsistent metadata is refused by Hasura (HTTP 400, code unexpected, the objects in internal),
        so a failed write leaves the server as it was."""
        return self.call({'type': 'replace_metadata', 'version': 2, 'resource_version': resource_version,
                          'args': {'allow_inconsistent_metadata': False, 'metadata': metadata}})

    def inconsistent_objects(self):
        data = self.call({'type': 'get_inconsistent_metadata', 'args': {}})
        return (data or {}).get('inconsistent_objects') or []
