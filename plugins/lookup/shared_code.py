# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
name: shared_code
short_description: The source of a module_utils file that the collection's host services share with its modules
version_added: 0.1.0
author: selfbase.platform maintainers (@selfbase)
description:
  - Returns the text of a file in C(plugins/module_utils) that modules and host services both import, read through
    the collection's Python package, so that the C(selfbase.platform.host_services) role can install it on a host
    without a path into the collection.
  - Only the files listed as shared are returned; the rest may import Ansible and have no place on a host.
options:
  _terms:
    description: Names of the shared files, without C(.py).
    type: list
    elements: str
    required: true
'''

EXAMPLES = r'''
- name: Install the Stripe HTTP client beside the billing service, under the path the modules import it by
  ansible.builtin.copy:
    content: "{{ lookup('selfbase.platform.shared_code', 'stripe_http') }}"
    dest: /opt/selfbase-billing/lib/ansible_collections/selfbase/platform/plugins/module_utils/stripe_http.py
    mode: "0644"
'''

RETURN = r'''
_raw:
  description: The text of each named file.
  type: list
  elements: str
'''

import importlib.util

from ansible.errors import AnsibleLookupError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.lookup import LookupBase

PACKAGE = 'ansible_collections.selfbase.platform.plugins.module_utils'
# Files with no Ansible imports, imported under PACKAGE by modules and host services alike.
SHARED = ('stripe_http',)


class LookupModule(LookupBase):

    def run(self, terms, variables=None, **kwargs):
        out = []
        for name in terms:
            if name not in SHARED:
                raise AnsibleLookupError('shared_code: %r is not shared with host services; shared: %s'
                                         % (name, ', '.join(SHARED)))
            with open(importlib.util.find_spec(PACKAGE + '.' + name).origin, 'rb') as f:
                out.append(to_text(f.read()))
        return out
