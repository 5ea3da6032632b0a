#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: tenant_info
short_description: Read tenants, their domains, and their usage against quota
version_added: 0.1.0
description:
  - Returns tenants of the platform database with their plan, domains and, optionally, their usage
    of every metric that has a quota, as C(platform.quota_status()) computes it.
  - Reads everything in one SQL query, set-based (not one C(platform.quota_status()) call per tenant), so it stays
    fast with tens of thousands of tenants.
  - Never changes anything.
options:
  slugs:
    description:
      - Only these tenants. Default is every tenant that matches the other filters.
    type: list
    elements: str
  status:
    description:
      - Only tenants with one of these statuses.
      - Default is every status except V(deleted). List V(deleted) to see soft-deleted tenants.
    type: list
    elements: str
    choices: [trial, active, past_due, suspended, canceled, deleted]
  plan:
    description:
      - Only tenants on one of these plan codes.
    type: list
    elements: str
  include_usage:
    description:
      - Return RV(tenants[].usage) and RV(tenants[].quota_status) for each tenant.
      - Turn it off to list tenants without reading usage.
    type: bool
    default: true
extends_documentation_fragment:
  - selfbase.platform.postgres
attributes:
  check_mode:
    support: full
    description: The module only reads, so it runs the same in check mode.
  diff_mode:
    support: none
    description: The module changes nothing, so there is nothing to diff.
  idempotent:
    support: full
    description: The module only reads and always reports no change.
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Read every tenant that is not deleted, with usage
  selfbase.platform.tenant_info:
    login_db: selfbase
  register: platform_tenants

- name: Show the tenants past a quota
  ansible.builtin.debug:
    msg: "{{ platform_tenants.tenants | selectattr('quota_status', 'equalto', 'exceeded') | map(attribute='slug') }}"

- name: Read two tenants, deleted or not
  selfbase.platform.tenant_info:
    login_db: selfbase
    slugs: [acme, globex]
    status: [trial, active, past_due, suspended, canceled, deleted]

- name: List the suspended tenants on the pro plan, without usage
  selfbase.platform.tenant_info:
    login_db: selfbase
    status: [suspended]
    plan: [pro]
    include_usage: false
'''

RETURN = r'''
count:
  description: Number of tenants returned.
  returned: always
  type: int
  sample: 1
tenants:
  description:
    - The tenants that match, ordered by slug.
    - Each with C(id), C(slug), C(name), C(status), C(plan), C(billing_cycle) and C(trial_ends_at) as in
      RV(selfbase.platform.tenant#module:tenant), and the keys below.
  returned: always
  type: list
  elements: dict
  sample:
    - {"id": "0b6f3f7e-2a7d-4c55-9a7e-6c1f4a9d2b11", "slug": "acme", "name": "Acme Corp", "status": "active",
       "plan": "pro", "billing_cycle": "month", "trial_ends_at": null, "created_at": "2025-01-31 09:12:44.120391+00:00",
       "domains": [{"domain": "acme.example.com", "primary": true, "verified": true}], "quota_status": "ok"}
  contains:
    created_at:
      description: Creation time.
      type: str
      sample: "2025-01-31 09:12:44.120391+00:00"
    domains:
      description: Domains of the tenant, the primary one first.
      type: list
      elements: dict
      sample: [{"domain": "acme.example.com", "primary": true, "verified": true}]
    usage:
      description: One entry per metric with a quota (override or plan), ordered by metric.
      returned: when O(include_usage=true)
      type: list
      elements: dict
      contains:
        metric:
          description: Name of the metric.
          type: str
          sample: api_requests
        used:
          description: Usage in the current period of the quota (all usage for period V(none)).
          type: int
          sample: 850
        limit:
          description: The limit in force, or null for unlimited.
          type: int
          sample: 1000
        percent:
          description: Usage as a percentage of the limit, rounded to 2 decimals; null when unlimited.
          type: float
          sample: 85.0
        status:
          description: V(ok), V(warning) from 80% of the limit, or V(exceeded) past the limit.
          type: str
          sample: warning
        mode:
          description: V(hard), V(soft) or V(overage).
          type: str
          sample: hard
        period:
          description: V(hour), V(day), V(month) or V(none).
          type: str
          sample: month
    quota_status:
      description: The worst RV(tenants[].usage[].status) of the tenant; V(ok) when it has no quota.
      returned: when O(include_usage=true)
      type: str
      sample: warning
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import (
    DatabaseError, connect, json_safe, postgres_argument_spec, require_schema)
from ansible_collections.selfbase.platform.plugins.module_utils.tenant_info import STATUSES, read_tenants


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        slugs=dict(type='list', elements='str'),
        status=dict(type='list', elements='str', choices=STATUSES),
        plan=dict(type='list', elements='str'),
        include_usage=dict(type='bool', default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    status = p['status'] if p['status'] is not None else [s for s in STATUSES if s != 'deleted']

    conn = connect(module, autocommit=True)
    require_schema(module, conn, '0007', dict(changed=False, tenants=[], count=0))
    try:
        rows = read_tenants(conn, status, p['slugs'], p['plan'], p['include_usage'])
    except DatabaseError as e:
        module.fail_json(msg='Could not read the tenants: %s' % str(e).strip())
    finally:
        conn.close()

    tenants = json_safe(rows)
    module.exit_json(changed=False, tenants=tenants, count=len(tenants))


if __name__ == '__main__':
    main()
