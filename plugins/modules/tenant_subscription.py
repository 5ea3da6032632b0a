#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: tenant_subscription
short_description: Manage a tenant's Stripe customer and subscription
version_added: 0.1.0
description:
  - Makes sure a tenant of the platform database has a Stripe customer and one subscription on its plan's price for
    its billing cycle and currency, and mirrors the subscription into C(platform.subscriptions) and the tenant.
  - The customer carries C(metadata.tenant_id). Its id is stored on the tenant (C(tenants.stripe_customer_id)). When
    no id is stored (a first run, or a run that stopped between the Stripe create and the database write), the
    customer is searched by C(metadata.tenant_id) (and listed by O(email), which unlike the search is immediately
    consistent) and created only when none is found, with an idempotency key derived from the tenant id and the
    customer's fields, so a retried run does not create a second customer and a changed name or email is not
    refused as a reused key.
  - The subscription has one licensed item, the plan's price (C(platform.plan_prices), written by
    M(selfbase.platform.billing_plan)), plus one metered item per overage price of the plan in the same cycle and
    currency. A plan or cycle swap updates the existing licensed item (C(items[0][id]) with the new price), with
    O(proration_behavior); it never adds a second licensed item. Metered items of the old plan are removed and
    those of the new plan added in the same request.
  - Input, the tenant, its plan's prices, the customer and its subscriptions are all read and checked before the
    first write. Stripe is written first, then the database in one transaction (with a row in
    C(platform.audit_log), entity C(subscription)).
options:
  tenant:
    description: Slug of the tenant (C(platform.tenants)).
    type: str
    required: true
  plan:
    description:
      - Plan code. Defaults to the tenant's plan. A plan different from the tenant's swaps the subscription and sets
        the tenant's plan. The plan must be active for a new subscription or a swap.
      - A tenant whose customer chose its plan in Stripe (C(plan_source) V(customer), migration 0017) keeps that plan
        and billing cycle; the difference is returned in RV(plan_kept) with a warning. The tenants module's
        C(plan_source=operator) takes the plan back.
    type: str
  billing_cycle:
    description: Billing interval. Defaults to the tenant's billing cycle; kept like O(plan) for a customer's plan.
    type: str
    choices: [month, year]
  currency:
    description:
      - Currency of the subscription. Defaults to the currency of the existing subscription, else to the only
        currency the plan has a price in for the cycle; when it has several, this option is required.
    type: str
  trial_days:
    description:
      - Trial length of a new subscription, in days. Defaults to the plan's C(trial_days).
      - Only applies when the tenant never had a subscription, so a re-subscribed tenant gets no second trial.
    type: int
  proration_behavior:
    description: How Stripe prorates a plan or cycle swap.
    type: str
    choices: [create_prorations, none, always_invoice]
    default: create_prorations
  cancel:
    description:
      - V(none) keeps the subscription running (and takes back a scheduled cancellation).
      - V(at_period_end) sets C(cancel_at_period_end); the subscription ends with its current period.
      - V(immediately) cancels it now. A later run with V(none) creates a new subscription.
    type: str
    choices: [none, at_period_end, immediately]
    default: none
  collection_method:
    description:
      - How Stripe collects payment. V(send_invoice) needs O(days_until_due). Compared only when set.
    type: str
    choices: [charge_automatically, send_invoice]
  days_until_due:
    description:
      - Days a customer has to pay an invoice. Only with O(collection_method=send_invoice) (given, or already the
        subscription's), as Stripe requires.
    type: int
  payment_behavior:
    description:
      - How Stripe creates a subscription whose first invoice must be paid now (no trial, C(charge_automatically),
        a price above zero).
      - V(error_if_incomplete) creates it only when the payment succeeds, so no unpaid subscription is left behind;
        without a default payment method on the customer the run fails, saying so (check mode predicts that).
      - V(allow_incomplete) (Stripe's own default) charges the default payment method and otherwise creates the
        subscription C(incomplete); V(default_incomplete) always creates it C(incomplete), for the application to
        confirm the first payment. An C(incomplete) subscription becomes C(incomplete_expired) after 23 hours if
        unpaid; the module never creates a second subscription while one is C(incomplete). Stripe changes only
        the metadata of an C(incomplete) subscription, so the module refuses any other change to one (plan,
        cycle, O(cancel=at_period_end), collection) before writing; O(cancel=immediately) still ends it.
    type: str
    choices: [error_if_incomplete, allow_incomplete, default_incomplete]
    default: error_if_incomplete
  email:
    description: Billing e-mail of the Stripe customer. Compared only when set.
    type: str
  promotion_code:
    description:
      - A promotion code (see M(selfbase.platform.billing_coupon)) the subscription redeems, for example
        C(LAUNCH20). The code must be active and usable by the tenant; the run fails before any write, naming this
        option, when it is not, when the plan's price is below the code's minimum amount, or when the code is for
        first-time customers and the tenant was invoiced before.
      - It replaces the subscription's discounts. The code is recorded in the subscription's
        C(metadata.promotion_code), and is redeemed once; a discount that ran out (a V(once) or V(repeating)
        coupon) is not redeemed again on the next run.
      - An empty string removes the subscription's discounts. Not compared when not set.
      - Stripe refuses it on an C(incomplete) subscription, and so does the module. The discount is mirrored in
        RV(subscription.discount) and counts in MRR (M(selfbase.platform.billing_info)).
    type: str
  automatic_tax:
    description:
      - Let Stripe Tax compute the tax of the subscription's invoices (the subscription's C(automatic_tax)).
        Not compared when not set.
      - Before any write, the run fails when Stripe Tax is not active on the account (its head office address is
        set in Stripe), or when the customer has no address Stripe Tax can place (O(billing_address), or the
        address the application saved on the customer).
      - Stripe refuses a change on an C(incomplete) subscription, and so does the module.
    type: bool
  billing_address:
    description:
      - The Stripe customer's billing address, which Stripe Tax places the customer by and invoices show.
      - Not compared when not set, so an address the customer saved in Checkout or the Customer Portal stays. When
        set, lines not given are cleared.
    type: dict
    suboptions:
      line1:
        description: Street, PO box or company name.
        type: str
      line2:
        description: Apartment, suite, unit or building.
        type: str
      city:
        description: City, district, suburb, town or village.
        type: str
      state:
        description: State, county, province or region (ISO 3166-2 subdivision code, such as C(NY)).
        type: str
      postal_code:
        description: Postal code; required, and checked, for the US (C(12345) or C(12345-6789)) and Canada.
        type: str
      country:
        description: Two-letter ISO 3166-1 country code in capitals, such as C(US) or C(DE).
        type: str
        required: true
  tax_exempt:
    description:
      - The customer's tax status, C(none), C(exempt), or C(reverse) (reverse charge, shown on invoices). Not
        compared when not set.
    type: str
    choices: [none, exempt, reverse]
  tax_ids:
    description:
      - The customer's tax IDs, exactly; tax IDs it has and that are not listed are removed, and an empty list
        removes them all. Not compared when not set, so tax IDs the customer gave in Checkout stay.
      - Stripe cannot change a tax ID, so a changed value is a new tax ID, and the old one is removed.
    type: list
    elements: dict
    suboptions:
      type:
        description:
          - A tax ID type of the pinned Stripe API version, such as C(eu_vat), C(gb_vat), C(us_ein), C(au_abn).
        type: str
        required: true
      value:
        description:
          - The tax ID, such as C(DE123456789); the formats of C(eu_vat), C(gb_vat), C(us_ein), C(au_abn) and
            C(ca_bn) are checked before any write.
        type: str
        required: true
  update_tenant:
    description:
      - Mirror the subscription onto the tenant too, besides C(platform.subscriptions), in C(plan), C(billing_cycle),
        C(trial_ends_at) and C(status). The status follows the subscription (C(trialing) to C(trial), C(active) to
        C(active); C(incomplete), C(past_due), C(unpaid) and C(paused), which all wait for a payment, to
        C(past_due); C(canceled) and C(incomplete_expired) to C(canceled)), but a tenant that is C(suspended) or
        C(deleted) keeps that status, which is the operator's decision.
    type: bool
    default: true
  state:
    description:
      - V(absent) is O(cancel=immediately). The customer and the database rows are kept, as history.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - selfbase.platform.postgres
  - selfbase.platform.stripe
attributes:
  check_mode:
    support: full
    description: Reads the database and Stripe, reports the writes it would make (RV(actions)) and the predicted
      mirror, and writes nothing.
  diff_mode:
    support: full
    description: Shows the subscription mirror before and after, in the shape of RV(subscription), with RV(tax)
      when a tax option is set.
  idempotent:
    support: full
    description: A second run with the same options makes no Stripe write; the database changes only when Stripe
      changed in between (for example a trial that ended).
notes:
  - Stripe calls go from the host that runs the module; run it on the controller (C(delegate_to=localhost)).
  - Webhooks keep the mirror current between runs; this module refreshes it whenever it runs.
seealso:
  - module: selfbase.platform.billing_plan
  - module: selfbase.platform.tenant
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Subscribe a tenant to its plan (a trial of the plan's trial_days first)
  selfbase.platform.tenant_subscription:
    login_db: selfbase
    api_key: "{{ vault_stripe_secret_key }}"
    tenant: acme
  delegate_to: localhost

- name: Move a tenant to the yearly Pro plan, without proration
  selfbase.platform.tenant_subscription:
    login_db: selfbase
    tenant: acme
    plan: pro
    billing_cycle: year
    proration_behavior: none

- name: Stripe Tax on a tenant's invoices, with its address and VAT number
  selfbase.platform.tenant_subscription:
    login_db: selfbase
    tenant: acme
    automatic_tax: true
    billing_address: {line1: Hauptstrasse 1, city: Berlin, postal_code: "10115", country: DE}
    tax_ids:
      - {type: eu_vat, value: DE123456789}

- name: Cancel at the end of the period
  selfbase.platform.tenant_subscription:
    login_db: selfbase
    tenant: acme
    cancel: at_period_end

- name: Cancel now
  selfbase.platform.tenant_subscription:
    login_db: selfbase
    tenant: initech
    state: absent
'''

RETURN = r'''
plan_kept:
  description:
    - The plan and billing cycle given, and those the tenant keeps because its customer chose them in Stripe.
  returned: when the given O(plan) or O(billing_cycle) differ from a customer's choice
  type: dict
  sample: {"slug": "acme", "wanted": {"plan": "starter", "billing_cycle": "month"},
           "current": {"plan": "pro", "billing_cycle": "month"}}
subscription:
  description:
    - The row of C(platform.subscriptions) after the run (in check mode, as it would be; ids of objects not created
      yet are null). Times are ISO 8601 in UTC.
  returned: always
  type: dict
  contains:
    tenant:
      description: Tenant slug.
      type: str
      sample: acme
    stripe_customer_id:
      description: Stripe customer id.
      type: str
      sample: cus_Q2x7aAbCdEfGhI
    stripe_subscription_id:
      description: Stripe subscription id, or null.
      type: str
      sample: sub_1Q2x7a
    stripe_item_id:
      description: Id of the licensed subscription item (the plan's price).
      type: str
      sample: si_Q2x7a
    stripe_price_id:
      description: The plan's price the subscription is on.
      type: str
      sample: price_1Q2x7a
    metered_items:
      description: Metered items by metric, with their item and price ids.
      type: dict
      sample: {"api_requests": {"item": "si_9", "price": "price_9"}}
    plan:
      description: Plan code.
      type: str
      sample: pro
    billing_cycle:
      description: C(month) or C(year).
      type: str
      sample: month
    currency:
      description: Currency.
      type: str
      sample: usd
    status:
      description: Stripe status (C(trialing), C(active), C(past_due), C(canceled), ...).
      type: str
      sample: trialing
    current_period_start:
      description: Start of the current period.
      type: str
      sample: "2025-06-17T09:30:00+00:00"
    current_period_end:
      description: End of the current period.
      type: str
      sample: "2025-07-17T09:30:00+00:00"
    trial_end:
      description: End of the trial, or null.
      type: str
      sample: "2025-07-01T09:30:00+00:00"
    cancel_at_period_end:
      description: Whether the subscription ends with the current period.
      type: bool
      sample: false
    canceled_at:
      description: When it was canceled, or null.
      type: str
      sample: null
    discount:
      description:
        - The subscription's discount, or null. C(percent_off), or C(amount_off) in the subscription's currency, as
          the coupon gives; C(duration) (C(once), C(repeating), C(forever)); C(end) as seconds since the epoch, null
          for a discount without end and in check mode for a discount not redeemed yet.
      type: dict
      sample: {"coupon": "Z4OV52SU", "promotion_code": "promo_1Q8", "percent_off": 25.0, "amount_off": null,
               "duration": "repeating", "end": 1801440000}
tax:
  description: The customer's tax details and Stripe Tax on the subscription, as Stripe holds them after the run.
  returned: unless the subscription is cancelled
  type: dict
  contains:
    automatic_tax:
      description: Whether Stripe Tax computes the subscription's tax.
      type: bool
    billing_address:
      description: The customer's address (C(line1), C(line2), C(city), C(state), C(postal_code), C(country)), or
        null.
      type: dict
    tax_exempt:
      description: C(none), C(exempt) or C(reverse).
      type: str
    tax_ids:
      description: The customer's tax IDs (C(type) and C(value)); null when O(tax_ids) is not set (not read).
      type: list
      elements: dict
  sample: {"automatic_tax": true, "billing_address": {"line1": "1 Main St", "line2": null, "city": "Brooklyn",
           "state": "NY", "postal_code": "11201", "country": "US"}, "tax_exempt": "none",
           "tax_ids": [{"type": "us_ein", "value": "12-3456789"}]}
actions:
  description: Stripe writes of this run, in order (in check mode, those it would make).
  returned: always
  type: list
  elements: str
  sample: ["create customer for acme", "create subscription on price_1Q2x7a"]
api_calls:
  description: Stripe requests this run made, reads and writes (retries not counted).
  returned: always
  type: dict
  sample: {"reads": 2, "writes": 0}
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.billing import INTERVALS, PRORATION_BEHAVIORS
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import postgres_argument_spec, run_module
from ansible_collections.selfbase.platform.plugins.module_utils.stripe_api import StripeClient, stripe_argument_spec
from ansible_collections.selfbase.platform.plugins.module_utils.subscriptions import SubscriptionRun


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(stripe_argument_spec())
    argument_spec.update(
        tenant=dict(type='str', required=True),
        plan=dict(type='str'),
        billing_cycle=dict(type='str', choices=list(INTERVALS)),
        currency=dict(type='str'),
        trial_days=dict(type='int'),
        proration_behavior=dict(type='str', default='create_prorations', choices=list(PRORATION_BEHAVIORS)),
        cancel=dict(type='str', default='none', choices=['none', 'at_period_end', 'immediately']),
        collection_method=dict(type='str', choices=['charge_automatically', 'send_invoice']),
        days_until_due=dict(type='int'),
        payment_behavior=dict(type='str', default='error_if_incomplete',
                              choices=['error_if_incomplete', 'allow_incomplete', 'default_incomplete']),
        email=dict(type='str'),
        promotion_code=dict(type='str', no_log=False),
        automatic_tax=dict(type='bool'),
        billing_address=dict(type='dict', options=dict(
            line1=dict(type='str'), line2=dict(type='str'), city=dict(type='str'), state=dict(type='str'),
            postal_code=dict(type='str', no_log=False), country=dict(type='str', required=True))),
        tax_exempt=dict(type='str', choices=['none', 'exempt', 'reverse']),
        tax_ids=dict(type='list', elements='dict', no_log=False, options=dict(
            type=dict(type='str', required=True), value=dict(type='str', required=True, no_log=False))),
        update_tenant=dict(type='bool', default=True),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[('collection_method', 'send_invoice', ('days_until_due',))])
    run = SubscriptionRun(module, StripeClient(module))
    run_module(module, run.run, failure=lambda: dict(actions=run.actions, api_calls=run.client.counts()))


if __name__ == '__main__':
    main()
