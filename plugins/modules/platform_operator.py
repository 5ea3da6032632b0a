#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: platform_operator
short_description: Let an auth user act as a platform operator
version_added: 0.1.0
description:
  - Lists an auth user in C(platform.operators) (migration 0009) and, with O(auth_role), gives them the role
    C(operator) in auth (C(auth.user_roles)), which puts it among the allowed roles of their tokens.
  - An operator's GraphQL requests with the C(X-Hasura-Role) header set to C(operator) read every tenant with its
    quotas, daily usage, subscriptions and invoices, and call the operator actions (suspend or resume a tenant,
    change its plan, set or clear a quota override), which the database audits with the operator's user id. The
    database accepts the role only for a user listed here.
  - O(state=absent) removes both. Every change is recorded in C(platform.audit_log) (entity C(operator), key the
    user id).
  - auth's rows are written as the owner of C(auth.user_roles) (C(SET LOCAL ROLE)), so no trigger or default of
    auth's tables runs with this module's login.
options:
  user:
    description:
      - The auth user, by id (a UUID) or by email (looked up in C(auth.users)).
    type: str
    required: true
  note:
    description:
      - Why this user is an operator (at most 200 characters). Not set, a new operator gets an empty note and an
        existing one keeps theirs.
    type: str
  auth_role:
    description:
      - Whether to give (or take away) the role C(operator) in C(auth.user_roles) too. auth creates its tables on
        its first start, so this needs a run after the auth role; with V(false) only C(platform.operators) changes
        and the role must come from elsewhere.
    type: bool
    default: true
  state:
    description:
      - V(present) lists the user and gives the role, V(absent) takes both away.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - selfbase.platform.postgres
attributes:
  check_mode:
    support: full
    description: Reports the operator as the run would leave it, and writes nothing.
  diff_mode:
    support: full
    description: Shows the operator before and after.
  idempotent:
    support: full
    description: A second run with the same options reports no change.
notes:
  - The login needs C(selfbase_admin) (the control plane) and, with O(auth_role), membership in the owner of
    auth's tables; a superuser has both.
seealso:
  - module: selfbase.platform.platform_schema
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Make the on-call engineer an operator
  selfbase.platform.platform_operator:
    login_db: selfbase
    user: oncall@example.com
    note: platform on-call rota

- name: Take it away again
  selfbase.platform.platform_operator:
    login_db: selfbase
    user: 3f1c9a52-6a43-4b1e-9f0e-2d1c7a9b8e01
    state: absent
'''

RETURN = r'''
operator:
  description: The operator after this run (in check mode, as it would be).
  returned: always
  type: dict
  contains:
    user_id:
      description: The auth user's id.
      type: str
      sample: 3f1c9a52-6a43-4b1e-9f0e-2d1c7a9b8e01
    listed:
      description: Whether the user is in C(platform.operators).
      type: bool
      sample: true
    note:
      description: The note, or null when the user is not listed.
      type: str
      sample: platform on-call rota
    auth_role:
      description: Whether the user has the role C(operator) in auth; only with O(auth_role).
      type: bool
      sample: true
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.operators import run
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import postgres_argument_spec, run_module


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        user=dict(type='str', required=True),
        note=dict(type='str'),
        auth_role=dict(type='bool', default=True),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda conn: run(module, conn), autocommit=True)


if __name__ == '__main__':
    main()
