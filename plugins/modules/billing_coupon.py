#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: billing_coupon
short_description: Manage a Stripe coupon and its promotion codes
version_added: 0.1.0
description:
  - Keeps one Stripe coupon (C(/v1/coupons)) and the customer-facing promotion codes that redeem it
    (C(/v1/promotion_codes)) as declared. A tenant's subscription redeems a code through the C(promotion_code)
    option of M(selfbase.platform.tenant_subscription).
  - The coupon is found by O(key), kept in its C(metadata.selfbase_coupon); coupons and codes are read with
    paginated list calls.
  - Stripe cannot change a coupon's discount, currency, duration, limits or products. When one of those differs, the
    module creates a new coupon with the same O(key), moves the promotion codes to it, and deletes the old one; it
    reports the old id in RV(replaced). Subscriptions that already have the old coupon's discount keep it, as
    Stripe does; new redemptions get the new terms.
  - Stripe cannot change a promotion code's expiry, limit or restrictions either. When one of those differs, the
    old code is deactivated and a new one with the same code is created (a code is unique among active codes).
  - Input is validated completely before the first call to Stripe, and every error names its field.
options:
  key:
    description:
      - Identifies the coupon, for example C(launch-2027). 1 to 63 lower-case letters, digits, C(_) or C(-).
    type: str
    required: true
  name:
    description:
      - Name shown to customers on invoices and receipts (at most 40 characters). Can change in place.
    type: str
  percent_off:
    description: Discount in percent, more than 0 and at most 100. Give this or O(amount_off).
    type: float
  amount_off:
    description: Discount in minor units of O(currency) (cents), more than 0. Give this or O(percent_off).
    type: int
  currency:
    description: Currency of O(amount_off), required with it.
    type: str
  currency_options:
    description:
      - Discounts in other currencies, in their minor units, so that an O(amount_off) coupon applies to
        subscriptions in those currencies too, for example V(eur) with V(500). Currencies can be added in place; a
        changed or removed amount makes a new coupon.
    type: dict
  duration:
    description:
      - How long a subscription keeps the discount. V(once) is the next invoice, V(repeating) is
        O(duration_in_months), V(forever) is as long as the subscription lasts.
    type: str
    choices: [once, repeating, forever]
    default: once
  duration_in_months:
    description: Months of discount, with O(duration=repeating) only.
    type: int
  max_redemptions:
    description: How many times the coupon can be redeemed in total, by all its codes. Unlimited when not set.
    type: int
  redeem_by:
    description:
      - Last moment the coupon can be redeemed, as an ISO 8601 date or date-time (UTC when no zone is given).
    type: str
  plans:
    description:
      - Plan codes whose products the coupon applies to (their Stripe products carry C(metadata.plan_code), as
        M(selfbase.platform.billing_plan) creates them). Every product when not set.
    type: list
    elements: str
  metadata:
    description: Metadata keys to set on the coupon. Keys not listed are kept. Can change in place.
    type: dict
  promotion_codes:
    description:
      - The coupon's promotion codes. Codes of the coupon that are not listed are deactivated (Stripe does not
        delete promotion codes). When not set, the codes are left alone, and a new coupon gets the codes that are
        active.
    type: list
    elements: dict
    suboptions:
      code:
        description: The code customers type, 1 to 500 letters and digits, unique regardless of case.
        type: str
        required: true
      active:
        description: Whether the code can be redeemed.
        type: bool
        default: true
      expires_at:
        description: When the code expires, as an ISO 8601 date or date-time; not after O(redeem_by).
        type: str
      max_redemptions:
        description: How many times this code can be redeemed.
        type: int
      first_time_transaction:
        description: Only customers without an earlier payment can redeem the code.
        type: bool
        default: false
      minimum_amount:
        description: Smallest first invoice, in minor units of O(promotion_codes[].minimum_amount_currency).
        type: int
      minimum_amount_currency:
        description: Currency of O(promotion_codes[].minimum_amount), required with it.
        type: str
      metadata:
        description: Metadata keys to set on the code. Keys not listed are kept.
        type: dict
  state:
    description:
      - V(absent) deletes the coupon. Its promotion codes stop being active; discounts already given stay.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - selfbase.platform.stripe
attributes:
  check_mode:
    support: full
    description: Reads the coupon and its codes, reports the writes it would make and the result, and writes nothing.
  diff_mode:
    support: full
    description: Shows the coupon and its promotion codes before and after.
  idempotent:
    support: full
    description: A second run with the same options reports no change and makes no write call to Stripe.
seealso:
  - module: selfbase.platform.tenant_subscription
  - module: selfbase.platform.billing_plan
  - name: Stripe coupons and promotion codes
    description: How coupons and promotion codes discount subscriptions.
    link: https://docs.stripe.com/billing/subscriptions/coupons
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: 20% off the first three months of the pro plan, with a public code and one for a partner
  selfbase.platform.billing_coupon:
    key: launch-2027
    name: Launch offer
    percent_off: 20
    duration: repeating
    duration_in_months: 3
    plans: [pro]
    redeem_by: "2027-06-30"
    promotion_codes:
      - code: LAUNCH20
        first_time_transaction: true
      - code: PARTNER20
        max_redemptions: 50
  delegate_to: localhost

- name: 10 dollars (or 10 euros) off the next invoice
  selfbase.platform.billing_coupon:
    key: sorry-for-the-outage
    amount_off: 1000
    currency: usd
    currency_options: {eur: 1000}
  delegate_to: localhost

- name: Retire a coupon
  selfbase.platform.billing_coupon:
    key: launch-2026
    state: absent
  delegate_to: localhost
'''

RETURN = r'''
coupon:
  description: The coupon after this run (in check mode, as it would be; a coupon to create has no C(id)).
  returned: always
  type: dict
  sample: {"id": "Z4OV52SU", "key": "launch-2027", "name": "Launch offer", "percent_off": 20.0, "amount_off": null,
           "currency": null, "currency_options": {}, "duration": "repeating", "duration_in_months": 3,
           "max_redemptions": null, "redeem_by": "2027-06-30T00:00:00+00:00", "plans": ["pro"], "metadata": {},
           "valid": true, "times_redeemed": 4}
promotion_codes:
  description: The promotion codes of the coupon, active and inactive, sorted by code.
  returned: always
  type: list
  elements: dict
  sample: [{"id": "promo_1Q8", "code": "LAUNCH20", "active": true, "expires_at": null, "max_redemptions": null,
            "first_time_transaction": true, "minimum_amount": null, "minimum_amount_currency": null,
            "metadata": {}, "times_redeemed": 3}]
replaced:
  description: Id of the coupon that a new one replaced because its terms changed, or null.
  returned: always
  type: str
  sample: Y3NU41RT
actions:
  description: The Stripe writes of this run (in check mode, the ones it would make), in order.
  returned: always
  type: list
  elements: str
  sample: ["create coupon launch-2027", "create promotion code LAUNCH20"]
api_calls:
  description: Stripe API calls this run made (each list page is one read).
  returned: always
  type: dict
  sample: {"reads": 2, "writes": 2}
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.coupons import CouponRun
from ansible_collections.selfbase.platform.plugins.module_utils.errors import exit_run
from ansible_collections.selfbase.platform.plugins.module_utils.stripe_api import StripeClient, stripe_argument_spec


def main():
    argument_spec = stripe_argument_spec()
    argument_spec.update(
        key=dict(type='str', required=True, no_log=False),
        name=dict(type='str'),
        percent_off=dict(type='float'),
        amount_off=dict(type='int'),
        currency=dict(type='str'),
        currency_options=dict(type='dict'),
        duration=dict(type='str', default='once', choices=['once', 'repeating', 'forever']),
        duration_in_months=dict(type='int'),
        max_redemptions=dict(type='int'),
        redeem_by=dict(type='str'),
        plans=dict(type='list', elements='str'),
        metadata=dict(type='dict'),
        promotion_codes=dict(type='list', elements='dict', options=dict(
            code=dict(type='str', required=True),
            active=dict(type='bool', default=True),
            expires_at=dict(type='str'),
            max_redemptions=dict(type='int'),
            first_time_transaction=dict(type='bool', default=False),
            minimum_amount=dict(type='int'),
            minimum_amount_currency=dict(type='str'),
            metadata=dict(type='dict'),
        )),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[('percent_off', 'amount_off')])
    run = CouponRun(module, StripeClient(module))
    exit_run(module, run, 'Stripe coupon %s' % module.params['key'])


if __name__ == '__main__':
    main()
