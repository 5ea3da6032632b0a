# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options shared by the modules that talk to Hasura's metadata API."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  endpoint:
    description:
      - Base URL of the Hasura GraphQL Engine, without a path; the module posts to C(<endpoint>/v1/metadata).
      - The metadata API must be reachable from where the module runs. On the platform, nginx blocks it from the
        public, so run the module on an C(api) host against the loopback port, or through a private address.
      - Falls back to the E(HASURA_GRAPHQL_ENDPOINT) environment variable.
    type: str
    default: http://127.0.0.1:8080
  admin_secret:
    description:
      - Hasura's admin secret, sent as the C(X-Hasura-Admin-Secret) header. Never logged.
      - Falls back to the E(HASURA_GRAPHQL_ADMIN_SECRET) environment variable. When neither is set, no header is
        sent, which only works on a Hasura without an admin secret.
    type: str
  validate_certs:
    description:
      - Verify the TLS certificate of an C(https) O(endpoint).
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for each answer of the metadata API.
    type: int
    default: 30
'''
