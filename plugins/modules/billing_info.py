#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: billing_info
short_description: Read tenants' billing state and the platform's MRR from the billing mirrors
version_added: 0.1.0
description:
  - Reads what the billing role's webhook receiver keeps in the platform database (migration 0006), without calling
    Stripe. Per tenant - its plan and status, its subscription, its dunning state, whether it has a payment method
    (brand and last 4 digits only), its usage against quota in the current period, its last invoices and the amount
    due on open invoices.
  - Platform-wide, per currency, the MRR at the start and at the end of a month and its movements, per tenant
    between the two - new (a tenant that never paid before), reactivated (one that paid before), expansion,
    contraction and churned - and the net change.
  - A subscription counts towards MRR from its start, or the end of its trial, until it is canceled, at its plan's
    price times its quantity (a yearly price over 12), less a recurring discount (percent off, or an amount off
    spread over the billing period; a V(once) discount is not recurring). Incomplete subscriptions never count.
    Each change of price, quantity, discount or status is kept in C(platform.subscription_versions) (migration
    0013), so a month's figures are those that held then.
  - Never changes anything.
options:
  slugs:
    description:
      - Only these tenants. Default is every tenant that is not deleted.
    type: list
    elements: str
  month:
    description:
      - The month of the MRR figures, as V(YYYY-MM) (UTC). Default is the current month, up to now.
    type: str
  invoices:
    description:
      - How many of each tenant's invoices to return, newest first.
    type: int
    default: 3
  include_tenants:
    description:
      - Return RV(tenants). Turn it off for the MRR figures alone.
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
seealso:
  - module: selfbase.platform.tenant_info
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Read the billing state of every tenant and this month's MRR
  selfbase.platform.billing_info:
    login_db: selfbase
  register: billing

- name: Show the tenants in dunning
  ansible.builtin.debug:
    msg: "{{ billing.tenants | selectattr('dunning') | map(attribute='slug') }}"

- name: Last month's MRR movements only
  selfbase.platform.billing_info:
    login_db: selfbase
    month: "2026-11"
    include_tenants: false
'''

RETURN = r'''
month:
  description: The month of RV(mrr), V(YYYY-MM).
  returned: always
  type: str
  sample: "2026-11"
tenants:
  description: The tenants, ordered by slug.
  returned: always
  type: list
  elements: dict
  sample:
    - slug: acme
      name: Acme Corp
      status: past_due
      plan: pro
      subscription: {id: sub_1Q, status: past_due, current_period_start: "2026-11-01 00:00:00+00:00",
                     current_period_end: "2026-12-01 00:00:00+00:00", cancel_at_period_end: false, trial_end: null,
                     synced_at: "2026-11-03 10:00:01+00:00"}
      dunning: {state: past_due, reason: invoice in_1Q payment failed, since: "2026-11-03 10:00:01+00:00",
                grace_ends_at: "2026-11-10 10:00:01+00:00"}
      payment_method: {present: true, brand: visa, last4: "4242"}
      usage: [{metric: api_requests, used: 850, limit: 1000, percent: 85.0, status: warning, period: month}]
      invoices: [{id: in_1Q, number: ACME-0007, status: open, currency: usd, amount_due: 2900, amount_paid: 0,
                  amount_remaining: 2900, hosted_invoice_url: "https://invoice.stripe.com/i/acct_1/test_1"}]
      amount_due: {usd: 2900}
      unbilled_overage: []
  contains:
    subscription:
      description: The mirrored subscription, or null.
      type: dict
    dunning:
      description: The tenant's dunning state (V(past_due) or V(suspended)), its reason and grace period, or null.
      type: dict
    payment_method:
      description: Whether the customer has a default payment method, and its brand and last 4 digits.
      type: dict
    usage:
      description: Usage against every quota in the current period, as in RV(selfbase.platform.tenant_info#module:tenants).
      type: list
      elements: dict
    tax:
      description:
        - The customer's tax details as mirrored from Stripe, or null before the customer's first event - its
          country, V(tax_exempt) (V(none), V(exempt) or V(reverse)), V(location) (where Stripe Tax places it -
          V(supported), V(not_collecting), V(unrecognized_location) or V(failed)) and V(tax_ids) (type, value and
          verification status).
      type: dict
    invoices:
      description:
        - The last O(invoices) invoices, newest first; amounts in the currency's minor unit, with the tax Stripe
          charged (V(tax)) and the total before it (V(total_excluding_tax)).
      type: list
      elements: dict
    amount_due:
      description: What open invoices still ask for, per currency, in minor units.
      type: dict
    unbilled_overage:
      description:
        - Overage of closed hours in the last 35 days (Stripe's meter window) that no meter event carries, per metric.
        - I(reason) is V(no_customer) (the tenant has no Stripe customer) or V(no_meter) (its plan's quota of the
          metric has no Stripe meter); I(quantity) is the sum, I(since) when the oldest of it happened.
      type: list
      elements: dict
      sample: [{metric: api_requests, reason: no_customer, quantity: 1500, since: "2026-11-02T14:00:00+00:00"}]
mrr:
  description: Per currency, MRR movements of the month, in minor units per month.
  returned: always
  type: list
  elements: dict
  sample:
    - {currency: usd, mrr_start: 120000.0, new: 5800.0, reactivated: 2900.0, expansion: 7000.0,
       contraction: 580.0, churned: 2900.0, mrr_end: 132220.0, net: 12220.0, new_subscriptions: 2,
       reactivated_subscriptions: 1, churned_subscriptions: 1}
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.billing_reports import report
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import (
    DatabaseError, connect, json_safe, postgres_argument_spec, require_schema)


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        slugs=dict(type='list', elements='str'),
        month=dict(type='str'),
        invoices=dict(type='int', default=3),
        include_tenants=dict(type='bool', default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if p['invoices'] < 0:
        module.fail_json(msg='invoices must be 0 or more, got %d.' % p['invoices'])
    conn = connect(module, autocommit=True)
    require_schema(module, conn, '0014', dict(changed=False, tenants=[], mrr=[], month=p['month']))
    try:
        result = report(conn, p['slugs'], p['month'], p['invoices'], p['include_tenants'])
    except ValueError as e:
        module.fail_json(msg=str(e))
    except DatabaseError as e:
        module.fail_json(msg='Could not read the billing mirrors: %s' % str(e).strip())
    finally:
        conn.close()
    module.exit_json(changed=False, **json_safe(result))


if __name__ == '__main__':
    main()
