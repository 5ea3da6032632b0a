#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: tenant_quota
short_description: Override one quota of one tenant
version_added: 0.1.0
description:
  - Manages a per-tenant override of one metric's quota in C(platform.tenant_quotas).
    While an override exists it replaces the quota of the tenant's plan for that metric.
  - O(state=absent) removes the override, so the plan's quota applies again.
  - Only the options you set are compared and changed. When the override is created, O(period),
    O(mode) and O(overage_price) that are not set are taken from the plan's quota for that metric,
    or default to V(month), V(hard) and no price when the plan has none.
  - Every change is recorded in C(platform.audit_log) (entity C(tenant_quota), key C(<tenant>/<metric>)).
options:
  tenant:
    description:
      - Slug of the tenant. The tenant must exist and must not be deleted.
    type: str
    required: true
  metric:
    description:
      - Name of the metric, as listed in C(platform.metrics), for example C(api_requests),
        C(storage_bytes), C(bandwidth_bytes), C(members) or C(projects).
    type: str
    required: true
  limit:
    description:
      - The limit, as an integer or a string with a unit, for example V(1000), V(100k), V(2.5M),
        V(10GB), V(1TB) or V(512MiB). Byte units (V(B), V(KB), V(MB), V(GB), V(TB), V(KiB), V(MiB),
        V(GiB), V(TiB)) are only accepted for metrics whose unit is C(bytes).
      - V(unlimited) removes the limit.
      - When O(limit) is not set, a new override takes the plan's limit (unlimited if the plan has none)
        and an existing override keeps its limit.
    type: raw
  period:
    description:
      - The window usage is counted over. V(none) counts all usage ever (for counts such as members).
    type: str
    choices: [hour, day, month, none]
  mode:
    description:
      - V(hard) refuses usage past the limit, V(soft) allows it and reports it,
        V(overage) allows it and records the excess for billing at O(overage_price).
    type: str
    choices: [hard, soft, overage]
  overage_price:
    description:
      - Price of one unit past the limit, in currency units (for example V(0.001)), at most 10 decimal places.
      - An empty string removes the price. In O(mode=overage) without a price, the excess is recorded unpriced.
    type: raw
  state:
    description:
      - V(present) creates or updates the override, V(absent) removes it.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - selfbase.platform.postgres
attributes:
  check_mode:
    support: full
    description: Reports the override and the effective quota the run would produce, and writes nothing.
  diff_mode:
    support: full
    description: Shows the override before and after; an empty dictionary means no override.
  idempotent:
    support: full
    description: Values are compared after normalisation (V(10GB) equals a stored 10000000000), so a second run reports no change.
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Give acme 1 TB of storage, whatever its plan says
  selfbase.platform.tenant_quota:
    login_db: selfbase
    tenant: acme
    metric: storage_bytes
    limit: 1TB

- name: Bill acme's API requests past 5 million a month instead of refusing them
  selfbase.platform.tenant_quota:
    login_db: selfbase
    tenant: acme
    metric: api_requests
    limit: 5M
    period: month
    mode: overage
    overage_price: 0.0002

- name: Let acme have any number of members
  selfbase.platform.tenant_quota:
    login_db: selfbase
    tenant: acme
    metric: members
    limit: unlimited

- name: Go back to the plan's storage quota
  selfbase.platform.tenant_quota:
    login_db: selfbase
    tenant: acme
    metric: storage_bytes
    state: absent
'''

RETURN = r'''
quota:
  description:
    - The tenant's override after this run (in check mode, as it would be), or null when there is none.
  returned: always
  type: dict
  contains:
    tenant:
      description: Slug of the tenant.
      type: str
      sample: acme
    metric:
      description: Name of the metric.
      type: str
      sample: storage_bytes
    limit:
      description: The limit, or null for unlimited.
      type: int
      sample: 1000000000000
    period:
      description: V(hour), V(day), V(month) or V(none).
      type: str
      sample: month
    mode:
      description: V(hard), V(soft) or V(overage).
      type: str
      sample: hard
    overage_price:
      description: Price of one unit past the limit, as a decimal string, or null.
      type: str
      sample: "0.0002"
effective:
  description:
    - The quota in force for the metric after this run, from the override or from the plan; null when
      neither has one (the metric is unlimited).
    - The keys of RV(quota) but C(tenant), and RV(effective.source).
  returned: always
  type: dict
  contains:
    source:
      description: V(tenant) when the override is in force, V(plan) when the plan's quota is.
      type: str
      sample: tenant
tenant_id:
  description: UUID of the tenant.
  returned: always
  type: str
  sample: 0b6f3f7e-2a7d-4c55-9a7e-6c1f4a9d2b11
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import postgres_argument_spec, run_module
from ansible_collections.selfbase.platform.plugins.module_utils.quotas import MODES, PERIODS
from ansible_collections.selfbase.platform.plugins.module_utils.tenant_quotas import run


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        tenant=dict(type='str', required=True),
        metric=dict(type='str', required=True),
        limit=dict(type='raw'),
        period=dict(type='str', choices=list(PERIODS)),
        mode=dict(type='str', choices=list(MODES)),
        overage_price=dict(type='raw'),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run_module(module, lambda conn: run(module, conn), autocommit=True)


if __name__ == '__main__':
    main()
