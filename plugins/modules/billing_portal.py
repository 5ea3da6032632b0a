#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: billing_portal
short_description: Manage a Stripe Customer Portal configuration
version_added: 0.1.0
description:
  - Keeps one Stripe Customer Portal configuration (C(/v1/billing_portal/configurations)) as declared, the page
    where a tenant's customers change their plan, cancel, update their payment method and read their invoices.
  - The configuration is found by O(key), kept in its C(metadata.selfbase_portal).
  - The plans a customer may switch between are plan codes. Each is the Stripe product whose
    C(metadata.plan_code) it is (made by M(selfbase.platform.billing_plan)), with that product's active licensed
    recurring prices; metered overage prices are left out (the portal switches a subscription's base price).
  - Stripe never deletes a configuration; O(state=absent) deactivates it, and a later O(state=present) reactivates
    it.
  - Input is validated completely before the first call to Stripe, and every error names its field.
options:
  key:
    description:
      - Identifies the configuration, for example C(default). 1 to 63 lower-case letters, digits, C(_) or C(-).
    type: str
    required: true
  name:
    description: Name of the configuration, shown in Stripe's Dashboard only.
    type: str
  headline:
    description: Headline shown on the portal page.
    type: str
  privacy_policy_url:
    description: Link to the privacy policy. Stripe cannot remove a link once set; leaving it out keeps it.
    type: str
  terms_of_service_url:
    description: Link to the terms of service. Stripe cannot remove a link once set; leaving it out keeps it.
    type: str
  default_return_url:
    description: Where the portal's link back to the application goes, unless a session names another.
    type: str
  login_page:
    description: Whether Stripe serves a login link for this configuration (customers sign in by e-mail).
    type: bool
    default: false
  customer_update:
    description: The customer details a customer may change in the portal; an empty list turns it off.
    type: list
    elements: str
    choices: [address, email, name, phone, shipping, tax_id]
    default: [address, email, name, tax_id]
  invoice_history:
    description: Whether the portal lists the customer's invoices.
    type: bool
    default: true
  payment_method_update:
    description: Whether the customer may change the payment method.
    type: bool
    default: true
  cancellation:
    description: Whether and how a customer may cancel a subscription.
    type: dict
    default: {}
    suboptions:
      enabled:
        description: Whether the portal offers cancellation.
        type: bool
        default: true
      mode:
        description: At the end of the paid period, or at once.
        type: str
        choices: [at_period_end, immediately]
        default: at_period_end
      prorate:
        description: Credit the unused part of the period, with O(cancellation.mode=immediately) only.
        type: bool
        default: false
      reasons:
        description: Reasons the portal asks for on cancellation; none turns the question off.
        type: list
        elements: str
        choices: [customer_service, low_quality, missing_features, other, switched_service, too_complex,
                  too_expensive, unused]
        default: []
  plans:
    description:
      - Plan codes a customer may switch between, at most 10 (Stripe's limit). None turns plan changes off.
    type: list
    elements: str
    default: []
  plan_changes:
    description: How a customer changes plan, with O(plans).
    type: dict
    default: {}
    suboptions:
      allowed:
        description: What the customer may change on the subscription.
        type: list
        elements: str
        choices: [price, promotion_code, quantity]
        default: [price]
      proration_behavior:
        description: Proration of a change within the period.
        type: str
        choices: [none, create_prorations, always_invoice]
        default: create_prorations
      downgrades_at_period_end:
        description:
          - Downgrades (a cheaper price, a shorter interval) take effect at the end of the paid period, so the
            customer keeps the plan it paid for until then. Stripe's API cannot turn this off again once on.
        type: bool
        default: false
  metadata:
    description: Metadata of the configuration (besides the module's own C(selfbase_portal)).
    type: dict
  state:
    description: V(absent) deactivates the configuration (Stripe keeps it).
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - selfbase.platform.stripe
attributes:
  check_mode:
    support: full
    description: Reads the configuration and the plans' products and prices, reports the write it would make and the
      result, and writes nothing.
  diff_mode:
    support: full
    description: Shows the configuration before and after.
  idempotent:
    support: full
    description: A second run with the same options reports no change and makes no write call to Stripe.
seealso:
  - module: selfbase.platform.billing_plan
  - name: Stripe Customer Portal
    description: What the portal offers and how its configurations work.
    link: https://docs.stripe.com/customer-management
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Customers switch between the starter, pro and business plans; downgrades wait for the period's end
  selfbase.platform.billing_portal:
    key: default
    headline: Manage your subscription
    privacy_policy_url: https://example.com/privacy
    terms_of_service_url: https://example.com/terms
    default_return_url: https://app.example.com/settings/billing
    plans: [starter, pro, business]
    plan_changes:
      allowed: [price, promotion_code]
      downgrades_at_period_end: true
    cancellation:
      mode: at_period_end
      reasons: [too_expensive, missing_features, switched_service, other]
  delegate_to: localhost

- name: Retire a configuration
  selfbase.platform.billing_portal:
    key: spring-2026
    state: absent
  delegate_to: localhost
'''

RETURN = r'''
configuration:
  description:
    - The configuration after this run, plans as plan codes (in check mode, as it would be; one to create has a
      null C(id)). Null when there is none.
  returned: always
  type: dict
  sample: {"id": "bpc_1Q8", "active": true, "name": null, "default_return_url": "https://app.example.com/billing",
           "login_page": false, "business_profile": {"headline": "Manage your subscription",
           "privacy_policy_url": "https://example.com/privacy", "terms_of_service_url": "https://example.com/terms"},
           "customer_update": ["address", "email", "name", "tax_id"], "invoice_history": true,
           "payment_method_update": true, "cancellation": {"enabled": true, "mode": "at_period_end",
           "prorate": false, "reasons": ["other", "too_expensive"]}, "plans": ["pro", "starter"],
           "plan_changes": {"allowed": ["price"], "proration_behavior": "create_prorations",
           "downgrades_at_period_end": true}, "metadata": {}}
actions:
  description: The Stripe write of this run (in check mode, the one it would make).
  returned: always
  type: list
  elements: str
  sample: ["update portal configuration bpc_1Q8"]
api_calls:
  description: Stripe API calls this run made (each list page is one read).
  returned: always
  type: dict
  sample: {"reads": 4, "writes": 1}
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.errors import exit_run
from ansible_collections.selfbase.platform.plugins.module_utils.portal import PortalRun
from ansible_collections.selfbase.platform.plugins.module_utils.stripe_api import StripeClient, stripe_argument_spec

REASONS = ['customer_service', 'low_quality', 'missing_features', 'other', 'switched_service', 'too_complex',
           'too_expensive', 'unused']


def main():
    argument_spec = stripe_argument_spec()
    argument_spec.update(
        key=dict(type='str', required=True, no_log=False),
        name=dict(type='str'),
        headline=dict(type='str'),
        privacy_policy_url=dict(type='str'),
        terms_of_service_url=dict(type='str'),
        default_return_url=dict(type='str'),
        login_page=dict(type='bool', default=False),
        customer_update=dict(type='list', elements='str', default=['address', 'email', 'name', 'tax_id'],
                             choices=['address', 'email', 'name', 'phone', 'shipping', 'tax_id']),
        invoice_history=dict(type='bool', default=True),
        payment_method_update=dict(type='bool', default=True),
        cancellation=dict(type='dict', default={}, options=dict(
            enabled=dict(type='bool', default=True),
            mode=dict(type='str', default='at_period_end', choices=['at_period_end', 'immediately']),
            prorate=dict(type='bool', default=False),
            reasons=dict(type='list', elements='str', default=[], choices=REASONS),
        )),
        plans=dict(type='list', elements='str', default=[]),
        plan_changes=dict(type='dict', default={}, options=dict(
            allowed=dict(type='list', elements='str', default=['price'],
                         choices=['price', 'promotion_code', 'quantity']),
            proration_behavior=dict(type='str', default='create_prorations',
                                    choices=['none', 'create_prorations', 'always_invoice']),
            downgrades_at_period_end=dict(type='bool', default=False),
        )),
        metadata=dict(type='dict'),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    run = PortalRun(module, StripeClient(module))
    exit_run(module, run, 'Stripe portal configuration %s' % module.params['key'])


if __name__ == '__main__':
    main()
