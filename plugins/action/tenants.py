# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for selfbase.platform.tenants: reads O(tenants_file) on the controller.

Ten thousand tenants through inventory variables cost Ansible seconds to load and more to template into the task;
read here with a C parser, the list goes to the module untouched."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import glob
import hashlib
import json
import os

import yaml

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.action import ActionBase

try:
    from yaml import CSafeLoader as SafeLoader
except ImportError:  # PyYAML without libyaml: slower, same result
    from yaml import SafeLoader


CACHE_DIR = os.path.join(C.ANSIBLE_HOME, 'selfbase', 'tenants_file')
CACHE_KEEP = 4


def _parse(data, path):
    if path.endswith('.json'):
        return json.loads(data)
    # PyYAML needs about 3 s for 10,000 tenants even with libyaml; a file parsed before (same bytes) is read
    # back from its JSON copy in a few milliseconds.
    cached = os.path.join(CACHE_DIR, hashlib.sha256(data).hexdigest() + '.json')
    try:
        with open(cached, 'rb') as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    # through JSON either way, so that a cached and a fresh read give the same values (dates as strings)
    text = json.dumps(yaml.load(data, Loader=SafeLoader), default=str)  # nosec: SafeLoader
    try:
        os.makedirs(CACHE_DIR, mode=0o700, exist_ok=True)
        tmp = '%s.%d.tmp' % (cached, os.getpid())
        with open(tmp, 'w') as f:
            f.write(text)
        os.replace(tmp, cached)
        for old in sorted(glob.glob(os.path.join(CACHE_DIR, '*.json')), key=os.path.getmtime)[:-CACHE_KEEP]:
            os.unlink(old)
    except OSError:  # a cache is a cache: never fail the task for it
        pass
    return json.loads(text)


def load_tenants(path):
    """The list of tenant entries in a YAML or JSON file: the document itself, or its key C(tenants)."""
    try:
        with open(path, 'rb') as f:
            doc = _parse(f.read(), path)
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise AnsibleActionFail('tenants_file: cannot read %s: %s' % (path, to_native(e)))
    if isinstance(doc, dict):
        if 'tenants' not in doc:
            raise AnsibleActionFail('tenants_file: %s is a mapping without a "tenants" key; give a list of tenants, '
                                    'or put it under "tenants" (keys found: %s)' % (path, ', '.join(sorted(doc)[:10])))
        doc = doc['tenants']
    if not isinstance(doc, list):
        raise AnsibleActionFail('tenants_file: %s must hold a list of tenants, got %s' % (path, type(doc).__name__))
    return doc


class ActionModule(ActionBase):

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        args = dict(self._task.args)
        path = args.pop('tenants_file', None)
        if path is not None:
            if args.get('tenants') is not None or args.get('tenants_json') is not None:
                raise AnsibleActionFail('tenants and tenants_file are mutually exclusive: give one of them')
            if not os.path.isabs(path):
                path = self._find_needle('files', path)
            # one JSON text: Ansible neither walks nor deep-copies ten thousand entries of it
            args['tenants_json'] = json.dumps(load_tenants(path))
        result.update(self._execute_module(module_name=self._task.resolved_action or 'selfbase.platform.tenants',
                                           module_args=args, task_vars=task_vars))
        return result
