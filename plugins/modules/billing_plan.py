#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: billing_plan
short_description: Manage a billing plan in the platform database and in Stripe
version_added: 0.1.0
description:
  - Makes one plan (or a list of plans, O(plans)) match in the platform database (C(platform.plans), C(plan_prices),
    C(plan_quotas), C(plan_overage_prices)) and in Stripe.
  - In Stripe, a plan is one Product with C(metadata.plan_code) set to the plan code, and one recurring Price per
    billing interval and currency, with the stable C(lookup_key) C(<code>_<interval>_<currency>) (for example
    C(pro_month_usd)). Every quota with O(quotas[].mode=overage) becomes one metered Price per interval and
    currency on the Stripe billing meter whose C(event_name) is the metric, with the lookup key
    C(<code>_<interval>_<currency>.<metric>).
  - Stripe prices cannot change their amount, currency or interval. When an amount changes, the module creates a
    new Price, moves the lookup key to it (C(transfer_lookup_key)), archives the old Price (C(active=false)) and
    stores the new price id. Subscriptions keep the old price until they are swapped.
  - Reads come first and are few. Products are listed once (100 per page) and matched by C(metadata.plan_code).
    Prices are looked up by C(lookup_keys), 10 keys per request. When a run needs more than 30 keys, the module
    lists every active price instead (100 per page), which costs fewer requests for a large price book.
    Meters are listed only when a quota bills overage.
  - All input, the database and Stripe are read and checked before the first write. Then Stripe is written, with
    idempotency keys derived from the desired state and the object replaced, then the database in one
    transaction, with one C(platform.audit_log) row per changed plan. A run that fails half-way can be run again;
    it finds what it created (by C(metadata.plan_code) and lookup key) and does not create it twice.
options:
  code:
    description:
      - Plan code, the key of the plan in the database and C(metadata.plan_code) in Stripe.
      - 1 to 63 lower-case letters, digits, C(_) and C(-), starting with a letter or digit.
      - Required unless O(plans) is given.
    type: str
  name:
    description:
      - Display name, also the Stripe product name. Defaults to O(code) when the plan is created.
    type: str
  description:
    description:
      - Description, also the Stripe product description. Left alone when omitted.
    type: str
  features:
    description:
      - The plan's features, each a name (1 to 40 lower-case letters, digits and C(_)) that is on (V(true)) or off
        (V(false)), or a name with a level (a string such as V(priority)). They replace the stored features, and the
        product's features in Stripe. Left alone when omitted.
      - In Stripe each feature that is on is an Entitlements feature attached to the plan's product, with the lookup
        key C(<name>) or, with a level, C(<name>.<level>) (V(support.priority)). A feature with that lookup key is
        used when the account has one, and created otherwise; features the plan no longer has are detached from
        its product (never archived, since other products may have them). Stripe then keeps each customer's active
        entitlements from its subscriptions.
      - Limits are quotas (O(quotas)), not features.
    type: dict
  active:
    description:
      - Whether new tenants and subscriptions may use the plan. V(false) also sets the Stripe product inactive;
        its prices stay as they are, so existing subscriptions go on.
    type: bool
    default: true
  trial_days:
    description:
      - Trial length, in days, that M(selfbase.platform.tenant_subscription) gives a new subscription on this plan.
    type: int
  prices:
    description:
      - The plan's recurring prices, one per interval and currency. When omitted, prices are left alone.
      - A price point that was listed before and is no longer is archived in Stripe and marked inactive in the
        database.
    type: list
    elements: dict
    suboptions:
      interval:
        description: Billing interval.
        type: str
        required: true
        choices: [month, year]
      currency:
        description:
          - Three-letter ISO 4217 code that Stripe supports, such as V(usd), V(eur) or V(jpy); case does not matter.
        type: str
        required: true
      amount:
        description:
          - Amount in the currency's minor unit, as Stripe takes it (cents for V(usd), yen for V(jpy), 1/1000 for
            V(kwd)). Give this or O(prices[].amount_decimal).
        type: raw
      amount_decimal:
        description:
          - Amount in the currency's main unit, with at most the currency's number of decimal places
            (V(9.99) usd, V(1200) jpy; V(10.5) jpy fails because jpy has no minor unit).
        type: raw
  quotas:
    description:
      - The plan's quotas; the exact set (quotas not listed are removed). When omitted, quotas are left alone.
      - An overage quota needs O(prices) in the same task; it gets a metered price for each of their intervals and
        currencies.
    type: list
    elements: dict
    suboptions:
      metric:
        description: Metric name from C(platform.metrics), for example V(api_requests) or V(storage_bytes).
        type: str
        required: true
      limit:
        description:
          - Included amount per period, as V(1000), V(100k), V(10GB), V(1TiB), or V(unlimited).
        type: raw
      period:
        description: Quota window; one of V(hour), V(day), V(month), V(none).
        type: str
        default: month
      mode:
        description:
          - V(hard) blocks, V(soft) warns, V(overage) allows and bills the excess through Stripe.
        type: str
        default: hard
      overage_unit_price:
        description:
          - With O(quotas[].mode=overage), the price of one unit over the limit, in the currency's main unit
            (V(0.0001) is a hundredth of a cent per request in usd).
          - A number applies in every currency of the plan; a dict maps each currency to its own price.
          - The metered price is billed per unit of meter events; the application sends the overage quantity
            (C(platform.usage_overages)) as meter events with the tenant's Stripe customer id.
        type: raw
  state:
    description:
      - V(absent) archives the Stripe product and all its active prices and marks the plan, its prices and overage
        prices inactive in the database. Rows are kept, so tenants and subscriptions keep their history.
    type: str
    choices: [present, absent]
    default: present
  plans:
    description:
      - Several plans in one run, each a dict with the options O(code), O(name), O(description), O(features),
        O(active), O(trial_days), O(prices), O(quotas) and O(state). Mutually exclusive with O(code).
      - One run reads Stripe once for all of them, so a price book of many plans costs a few list requests.
      - Errors name the entry, for example C(plans[3].prices[0].currency).
    type: list
    elements: dict
extends_documentation_fragment:
  - selfbase.platform.postgres
  - selfbase.platform.stripe
attributes:
  check_mode:
    support: full
    description: Reads the database and Stripe, reports what would change (RV(actions), diff) and writes nothing.
  diff_mode:
    support: full
    description: Shows each changed plan before and after, in the shape of RV(plans).
  idempotent:
    support: full
    description: A second run with the same options makes no Stripe write and no database change.
notes:
  - Stripe calls go from the host that runs the module; run it on the controller (C(delegate_to=localhost)).
  - Apply the billing meters (M(selfbase.platform.billing_meter)) before plans with overage quotas.
seealso:
  - module: selfbase.platform.billing_meter
  - module: selfbase.platform.tenant_subscription
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: A plan with monthly and yearly prices in two currencies and an overage quota
  selfbase.platform.billing_plan:
    login_host: db1.example.com
    login_user: selfbase_ops
    login_password: "{{ vault_db_password }}"
    login_db: selfbase
    api_key: "{{ vault_stripe_secret_key }}"
    code: pro
    name: Pro
    description: For growing teams
    features:
      custom_domains: true
      support: priority
    trial_days: 14
    prices:
      - {interval: month, currency: usd, amount_decimal: "29.00"}
      - {interval: year, currency: usd, amount: 29000}
      - {interval: month, currency: jpy, amount_decimal: 4000}
      - {interval: year, currency: jpy, amount: 40000}
    quotas:
      - {metric: members, limit: 25}
      - {metric: api_requests, limit: 1M, mode: overage, overage_unit_price: {usd: "0.0001", jpy: "0.015"}}
  delegate_to: localhost

- name: The whole price book in one run (a few Stripe list requests for all plans)
  selfbase.platform.billing_plan:
    login_db: selfbase
    plans: "{{ selfbase_plans }}"
  environment:
    STRIPE_API_KEY: "{{ vault_stripe_secret_key }}"
  delegate_to: localhost
  run_once: true

- name: Retire a plan (Stripe product and prices archived, tenants keep their history)
  selfbase.platform.billing_plan:
    login_db: selfbase
    code: legacy
    state: absent
'''

RETURN = r'''
plans:
  description:
    - Each plan of the run after it (in check mode, as it would be; ids of objects not created yet are null).
  returned: always
  type: list
  elements: dict
  contains:
    code:
      description: Plan code.
      type: str
      sample: pro
    name:
      description: Display name.
      type: str
      sample: Pro
    description:
      description: Description.
      type: str
      sample: For growing teams
    features:
      description: Features, each on, off or at a level.
      type: dict
      sample: {"custom_domains": true, "sso": false, "support": "priority"}
    stripe_features:
      description:
        - Lookup keys of the Entitlements features attached to the plan's product in Stripe.
        - Only when the task gives O(features).
      type: list
      elements: str
      returned: when O(features) is given
      sample: ["custom_domains", "support.priority"]
    active:
      description: Whether the plan can be assigned.
      type: bool
      sample: true
    trial_days:
      description: Trial length in days, or null.
      type: int
      sample: 14
    stripe_product_id:
      description: Id of the Stripe product.
      type: str
      sample: prod_Q2x7aAbCdEfGhI
    prices:
      description: Prices by interval and currency, with the amount in minor units and the Stripe price id.
      type: list
      elements: dict
      sample: [{"interval": "month", "currency": "usd", "amount": 2900, "lookup_key": "pro_month_usd",
                "stripe_price_id": "price_1Q2x7a", "active": true}]
    quotas:
      description: Quotas; overage ones with their meter and metered prices (unit_amount_decimal in minor units).
      type: list
      elements: dict
      sample: [{"metric": "api_requests", "limit": 1000000, "period": "month", "mode": "overage",
                "overage_unit_price": "0.0001", "stripe_meter_id": "mtr_123",
                "overage_prices": [{"interval": "month", "currency": "usd", "unit_amount_decimal": "0.01",
                                    "lookup_key": "pro_month_usd.api_requests", "stripe_price_id": "price_9",
                                    "active": true}]}]
actions:
  description: Stripe writes of this run, in order (in check mode, those it would make).
  returned: always
  type: list
  elements: str
  sample: ["create price pro_month_usd (2900 usd/month)", "archive price price_1Q2x7a (pro_month_usd)"]
api_calls:
  description: Stripe requests this run made, reads and writes (retries not counted).
  returned: always
  type: dict
  sample: {"reads": 3, "writes": 0}
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.billing import plan_options
from ansible_collections.selfbase.platform.plugins.module_utils.plans import run
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import postgres_argument_spec, run_module
from ansible_collections.selfbase.platform.plugins.module_utils.stripe_api import StripeClient, stripe_argument_spec


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(stripe_argument_spec())
    argument_spec.update(plan_options(code_required=False))
    argument_spec['plans'] = dict(type='list', elements='dict')
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[('code', 'plans')], required_one_of=[('code', 'plans')])
    client = StripeClient(module)
    run_module(module, lambda conn: run(module, conn, client), failure=lambda: dict(api_calls=client.counts()))


if __name__ == '__main__':
    main()
