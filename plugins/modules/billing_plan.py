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
      - Feature flags of the plan (a JSON object), kept in the database; replaces the stored object. Left alone when
        omitted.
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
      description: Feature flags.
      type: dict
      sample: {"custom_domains": true}
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

import json
from decimal import Decimal

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.billing import (
    BillingError, PLAN_KEYS, check_unique_codes, lookup_key, normalise_plan, overage_lookup_key, plan_options)
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import (
    DatabaseError, audit, connect, control_lock, json_safe, jsonb, postgres_argument_spec, require_schema)
from ansible_collections.selfbase.platform.plugins.module_utils.stripe_api import (
    api_calls, StripeClient, StripeError, idempotency_key, stripe_argument_spec)

LOCK_KEY = 'billing_plan'
LOOKUP_BATCH = 10          # Stripe's limit of lookup_keys per list request
LIST_ALL_ABOVE = 30        # more keys than this: one listing of all active prices is cheaper


# Reading ---------------------------------------------------------------------

def read_db(cur, codes):
    plans = {}
    for r in cur.execute('SELECT code, name, description, features, active, trial_days, stripe_product_id '
                         'FROM platform.plans WHERE code = ANY(%s)', (codes,)):
        r.update(prices={}, quotas={})
        plans[r['code']] = r
    for r in cur.execute('SELECT plan_code, billing_cycle, currency, unit_amount, lookup_key, stripe_price_id, active '
                         'FROM platform.plan_prices WHERE plan_code = ANY(%s)', (codes,)):
        plans[r['plan_code']]['prices'][(r['billing_cycle'], r['currency'])] = dict(
            amount=r['unit_amount'], lookup_key=r['lookup_key'], stripe_price_id=r['stripe_price_id'], active=r['active'])
    for r in cur.execute('SELECT plan_code, metric, limit_value, period, mode, overage_unit_price, stripe_meter_id '
                         'FROM platform.plan_quotas WHERE plan_code = ANY(%s)', (codes,)):
        plans[r['plan_code']]['quotas'][r['metric']] = dict(
            limit=r['limit_value'], period=r['period'], mode=r['mode'], overage_price=r['overage_unit_price'],
            stripe_meter_id=r['stripe_meter_id'], overage={})
    for r in cur.execute('SELECT plan_code, metric, billing_cycle, currency, unit_amount_decimal, lookup_key, '
                         'stripe_price_id, active FROM platform.plan_overage_prices WHERE plan_code = ANY(%s)', (codes,)):
        plans[r['plan_code']]['quotas'][r['metric']]['overage'][(r['billing_cycle'], r['currency'])] = dict(
            unit_amount_decimal=_dec_text(r['unit_amount_decimal']), lookup_key=r['lookup_key'],
            stripe_price_id=r['stripe_price_id'], active=r['active'])
    return plans


def _dec_text(value):
    return None if value is None else format(Decimal(value).normalize(), 'f')


class StripeState(object):
    """What the run needs from Stripe, read in as few list requests as possible."""

    def __init__(self, client):
        self.client = client
        self.products = {}      # plan_code -> product
        self.prices = {}        # lookup_key -> active price
        self.by_id = None       # price id -> active price, when every active price was listed
        self.meters = {}        # event_name -> active meter

    def read_products(self, module):
        for product in self.client.list('/v1/products', {'limit': 100}):
            code = (product.get('metadata') or {}).get('plan_code')
            if not code:
                continue
            if code in self.products:
                module.warn('Stripe has two products with metadata.plan_code=%s (%s, %s); using the active one, '
                            'then the oldest' % (code, self.products[code]['id'], product['id']))
                other = self.products[code]
                if (other['active'], -other.get('created', 0)) >= (product['active'], -product.get('created', 0)):
                    continue
            self.products[code] = product

    def read_prices(self, keys):
        keys = sorted(set(keys))
        if len(keys) > LIST_ALL_ABOVE:
            self.by_id = {}
            for price in self.client.list('/v1/prices', {'active': 'true', 'limit': 100}):
                self.by_id[price['id']] = price
                if price.get('lookup_key'):
                    self.prices[price['lookup_key']] = price
            return
        for i in range(0, len(keys), LOOKUP_BATCH):
            for price in self.client.list('/v1/prices', {'active': 'true', 'limit': 100,
                                                         'lookup_keys': keys[i:i + LOOKUP_BATCH]}):
                self.prices[price['lookup_key']] = price

    def active_price(self, price_id):
        """The price if it is active, else None (one read unless every active price was listed)."""
        if self.by_id is not None:
            return self.by_id.get(price_id)
        try:
            price = self.client.get('/v1/prices/%s' % price_id)
        except StripeError as e:
            if e.status == 404:
                return None
            raise
        return price if price.get('active') else None

    def product_prices(self, product_id):
        """Every active price of a product (for state=absent)."""
        if self.by_id is not None:
            return [p for p in self.by_id.values() if p.get('product') == product_id]
        return self.client.list('/v1/prices', {'product': product_id, 'active': 'true', 'limit': 100})

    def read_meters(self):
        for meter in self.client.list('/v1/billing/meters', {'limit': 100}):
            if meter.get('status') == 'active':
                self.meters[meter['event_name']] = meter


# Planning --------------------------------------------------------------------

class Plan(object):
    """One plan's Stripe writes and database state after the run."""

    def __init__(self, spec, db, product):
        self.spec = spec
        self.code = spec['code']
        self.db = db
        self.product = product
        self.product_id = product['id'] if product else None
        self.writes = []        # dicts: what, label, and what run() needs
        self.after = None


def _price_matches(price, product_id, interval, currency, amount=None, decimal=None, meter=None):
    recurring = price.get('recurring') or {}
    if price.get('product') != product_id or price.get('currency') != currency or recurring.get('interval') != interval:
        return False
    if (recurring.get('interval_count') or 1) != 1:
        return False
    if meter is None:
        return recurring.get('usage_type', 'licensed') == 'licensed' and price.get('unit_amount') == amount
    stored = price.get('unit_amount_decimal')
    return (recurring.get('usage_type') == 'metered' and recurring.get('meter') == meter
            and stored is not None and Decimal(str(stored)) == Decimal(decimal))


def _plan_price(plan, stripe, key, interval, currency, db_entry, amount=None, decimal=None, meter=None, metric=None):
    """Keep the active price that holds the lookup key, or replace it. Returns the entry's Stripe price id
    (None when it is created in this run, filled in by run())."""
    holder = stripe.prices.get(key)
    if holder is not None and plan.product_id and _price_matches(holder, plan.product_id, interval, currency,
                                                                 amount, decimal, meter):
        price_id = holder['id']
    else:
        params = {'currency': currency, 'recurring': {'interval': interval}, 'lookup_key': key,
                  'transfer_lookup_key': 'true', 'metadata': {'plan_code': plan.code}}
        if meter is None:
            params['unit_amount'] = amount
            label = 'create price %s (%d %s/%s)' % (key, amount, currency, interval)
        else:
            params['unit_amount_decimal'] = decimal
            params['billing_scheme'] = 'per_unit'
            params['recurring'].update(usage_type='metered', meter=meter)
            params['metadata']['metric'] = metric
            label = 'create metered price %s (%s %s minor units per unit/%s)' % (key, decimal, currency, interval)
        # what the key replaces is part of the idempotency key: 10 -> 20 -> 10, or absent -> present, creates
        # a new price instead of replaying the first creation (within Stripe's 24 h key retention)
        plan.writes.append(dict(what='price', label=label, params=params, entry=(metric, interval, currency),
                                replaces=[holder['id'] if holder else '', (db_entry or {}).get('stripe_price_id') or '']))
        price_id = None
        if holder is not None:
            plan.writes.append(dict(what='archive_price', label='archive price %s (%s)' % (holder['id'], key),
                                    id=holder['id']))
    # A price the database still points at but that lost the key (a run stopped between the create and the
    # archive): archive it too.
    old = db_entry and db_entry.get('stripe_price_id')
    if old and old != price_id and (holder is None or old != holder['id']) and stripe.active_price(old):
        plan.writes.append(dict(what='archive_price', label='archive price %s (was %s)' % (old, key), id=old))
    return price_id


def _retire(plan, stripe, key, db_entry):
    """A price point the plan no longer lists: archive its Stripe price."""
    seen = set()
    holder = stripe.prices.get(key)
    for price_id in (holder and holder.get('product') == plan.product_id and holder['id'],
                     db_entry.get('stripe_price_id')):
        if price_id and price_id not in seen and (price_id == (holder or {}).get('id') or stripe.active_price(price_id)):
            seen.add(price_id)
            plan.writes.append(dict(what='archive_price', label='archive price %s (%s)' % (price_id, key), id=price_id))


def plan_present(plan, stripe):
    spec, db = plan.spec, plan.db
    name = spec['name'] or (db['name'] if db else plan.code)
    description = spec['description'] if spec['description'] is not None else (db['description'] if db else '')
    product = plan.product
    if product is None:
        params = {'name': name, 'active': 'true' if spec['active'] else 'false', 'metadata': {'plan_code': plan.code}}
        if description:
            params['description'] = description
        plan.writes.append(dict(what='product', label='create product %s' % plan.code, params=params))
    else:
        wanted = dict(name=name, description=description or '', active=spec['active'])
        current = dict(name=product.get('name'), description=product.get('description') or '',
                       active=bool(product.get('active')))
        if wanted != current:
            params = dict((k, ('true' if v else 'false') if k == 'active' else v)
                          for k, v in wanted.items() if v != current[k])
            plan.writes.append(dict(what='product_update', label='update product %s (%s)' % (product['id'], ', '.join(
                sorted(params))), params=params, before=current))

    after = dict(code=plan.code, name=name, description=description, active=spec['active'],
                 features=spec['features'] if spec['features'] is not None else (db['features'] if db else {}),
                 trial_days=spec['trial_days'] if spec['trial_days'] is not None else (db['trial_days'] if db else None),
                 stripe_product_id=plan.product_id, prices={}, quotas={})
    db_prices = db['prices'] if db else {}
    if spec['prices'] is None:
        after['prices'] = dict((k, dict(v)) for k, v in db_prices.items())
    else:
        for (interval, currency), amount in spec['prices'].items():
            key = lookup_key(plan.code, interval, currency)
            entry = db_prices.get((interval, currency))
            price_id = _plan_price(plan, stripe, key, interval, currency, entry, amount=amount)
            after['prices'][(interval, currency)] = dict(amount=amount, lookup_key=key, stripe_price_id=price_id,
                                                         active=True)
        for (interval, currency), entry in db_prices.items():
            if (interval, currency) not in spec['prices']:
                if entry['active']:
                    _retire(plan, stripe, entry['lookup_key'] or lookup_key(plan.code, interval, currency), entry)
                after['prices'][(interval, currency)] = dict(entry, active=False)

    db_quotas = db['quotas'] if db else {}
    if spec['quotas'] is None:
        after['quotas'] = dict((m, dict(q, overage=dict(q['overage']))) for m, q in db_quotas.items())
        return after
    for metric, quota in spec['quotas'].items():
        old = db_quotas.get(metric) or dict(overage={})
        meter = stripe.meters[metric]['id'] if quota['overage'] else None
        overage = {}
        for (interval, currency) in (spec['prices'] if quota['overage'] else ()):
            key = overage_lookup_key(plan.code, interval, currency, metric)
            decimal = quota['overage'][currency]
            entry = old['overage'].get((interval, currency))
            price_id = _plan_price(plan, stripe, key, interval, currency, entry, decimal=decimal, meter=meter,
                                   metric=metric)
            overage[(interval, currency)] = dict(unit_amount_decimal=decimal, lookup_key=key, stripe_price_id=price_id,
                                                 active=True)
        for (interval, currency), entry in old['overage'].items():
            if (interval, currency) not in overage and entry['active']:
                _retire(plan, stripe, entry['lookup_key'], entry)
        after['quotas'][metric] = dict(limit=quota['limit'], period=quota['period'], mode=quota['mode'],
                                       overage_price=quota['overage_price'], stripe_meter_id=meter, overage=overage)
    for metric, old in db_quotas.items():
        if metric not in spec['quotas']:
            for entry in old['overage'].values():
                if entry['active']:
                    _retire(plan, stripe, entry['lookup_key'], entry)
    return after


def _prices_on_an_active_product(plan):
    """Stripe creates prices only on an active product: an inactive plan that needs new prices gets them while
    its product is active, and the product is archived after them."""
    if plan.spec['active'] or not any(w['what'] == 'price' for w in plan.writes):
        return
    product_active = bool(plan.product and plan.product.get('active'))
    for w in list(plan.writes):
        if w['what'] == 'product':
            w['params']['active'] = 'true'
        elif w['what'] == 'product_update':
            w['params'].pop('active', None)
            if not product_active:
                w['params']['active'] = 'true'
            if not w['params']:
                plan.writes.remove(w)
    updates = [w for w in plan.writes if w['what'] == 'product_update']
    if plan.product is not None and not product_active and not updates:
        plan.writes.insert(0, dict(what='product_update', label='reactivate product %s for its new prices'
                                   % plan.product_id, params={'active': 'true'}, before=dict(active=False)))
    # the new prices are part of the key: archiving after other prices is another write
    prices = sorted(w['params'].get('lookup_key') or '' for w in plan.writes if w['what'] == 'price')
    plan.writes.append(dict(what='product_update', label='archive product %s after its new prices' % (
        plan.product_id or plan.code), params={'active': 'false'}, before=dict(active=True, new_prices=prices)))


def plan_absent(plan, stripe):
    db = plan.db
    if plan.product is not None:
        for price in stripe.product_prices(plan.product_id):
            plan.writes.append(dict(what='archive_price', label='archive price %s (%s)' % (
                price['id'], price.get('lookup_key') or 'no lookup key'), id=price['id']))
        if plan.product.get('active'):
            plan.writes.append(dict(what='product_update', label='archive product %s' % plan.product_id,
                                    params={'active': 'false'}, before=dict(active=True)))
    if db is None:
        return None
    after = dict(db, active=False, stripe_product_id=plan.product_id or db['stripe_product_id'])
    after['prices'] = dict((k, dict(v, active=False)) for k, v in db['prices'].items())
    after['quotas'] = dict((m, dict(q, overage=dict((k, dict(v, active=False)) for k, v in q['overage'].items())))
                           for m, q in db['quotas'].items())
    return after


def public(state):
    if not state:
        return {}
    out = dict((k, state[k]) for k in ('code', 'name', 'description', 'features', 'active', 'trial_days',
                                       'stripe_product_id'))
    out['prices'] = [dict(interval=i, currency=c, **v) for (i, c), v in sorted(state['prices'].items())]
    out['quotas'] = []
    for metric, q in sorted(state['quotas'].items()):
        out['quotas'].append(dict(
            metric=metric, limit=q['limit'], period=q['period'], mode=q['mode'],
            overage_unit_price=_dec_text(q['overage_price']), stripe_meter_id=q['stripe_meter_id'],
            overage_prices=[dict(interval=i, currency=c, **v) for (i, c), v in sorted(q['overage'].items())]))
    return json_safe(out)


# Writing ---------------------------------------------------------------------

def run_stripe(client, plan):
    """Make the plan's Stripe writes; fills in the ids of created objects in plan.after."""
    for w in plan.writes:
        if w['what'] == 'product':
            product = client.post('/v1/products', w['params'], key=idempotency_key('product', plan.code))
            plan.product_id = product['id']
        elif w['what'] == 'product_update':
            client.post('/v1/products/%s' % plan.product_id, w['params'],
                        key=idempotency_key('product', plan.product_id, json.dumps(w['before'], sort_keys=True),
                                            json.dumps(w['params'], sort_keys=True)))
        elif w['what'] == 'price':
            params = dict(w['params'], product=plan.product_id)
            price = client.post('/v1/prices', params, key=idempotency_key(
                'price', json.dumps(params, sort_keys=True), w['replaces']))
            metric, interval, currency = w['entry']
            if metric is None:
                plan.after['prices'][(interval, currency)]['stripe_price_id'] = price['id']
            else:
                plan.after['quotas'][metric]['overage'][(interval, currency)]['stripe_price_id'] = price['id']
        elif w['what'] == 'archive_price':
            client.post('/v1/prices/%s' % w['id'], {'active': 'false'}, key=idempotency_key('archive price', w['id']))
    if plan.after is not None:
        plan.after['stripe_product_id'] = plan.product_id


def write_db(cur, plan, before):
    a = plan.after
    cur.execute(
        'INSERT INTO platform.plans AS p (code, name, description, features, active, trial_days, stripe_product_id) '
        'VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (code) DO UPDATE SET name = EXCLUDED.name, '
        'description = EXCLUDED.description, features = EXCLUDED.features, active = EXCLUDED.active, '
        'trial_days = EXCLUDED.trial_days, stripe_product_id = EXCLUDED.stripe_product_id, updated_at = now()',
        (a['code'], a['name'], a['description'] or '', jsonb(a['features']), a['active'], a['trial_days'],
         a['stripe_product_id']))
    # Lookup keys and price ids are unique: clear those that move before writing the new ones.
    cur.execute('UPDATE platform.plan_prices SET lookup_key = NULL, stripe_price_id = NULL WHERE plan_code = %s',
                (a['code'],))
    cur.executemany(
        'INSERT INTO platform.plan_prices (plan_code, billing_cycle, currency, unit_amount, lookup_key, stripe_price_id, '
        'active) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (plan_code, billing_cycle, currency) DO UPDATE SET '
        'unit_amount = EXCLUDED.unit_amount, lookup_key = EXCLUDED.lookup_key, '
        'stripe_price_id = EXCLUDED.stripe_price_id, active = EXCLUDED.active',
        [(a['code'], i, c, v['amount'], v['lookup_key'], v['stripe_price_id'], v['active'])
         for (i, c), v in a['prices'].items()])
    cur.execute('DELETE FROM platform.plan_quotas WHERE plan_code = %s AND NOT metric = ANY(%s)',
                (a['code'], list(a['quotas'])))
    cur.executemany(
        'INSERT INTO platform.plan_quotas (plan_code, metric, limit_value, period, mode, overage_unit_price, '
        'stripe_meter_id) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (plan_code, metric) DO UPDATE SET '
        'limit_value = EXCLUDED.limit_value, period = EXCLUDED.period, mode = EXCLUDED.mode, '
        'overage_unit_price = EXCLUDED.overage_unit_price, stripe_meter_id = EXCLUDED.stripe_meter_id',
        [(a['code'], m, q['limit'], q['period'], q['mode'], q['overage_price'], q['stripe_meter_id'])
         for m, q in a['quotas'].items()])
    cur.execute('DELETE FROM platform.plan_overage_prices WHERE plan_code = %s', (a['code'],))
    cur.executemany(
        'INSERT INTO platform.plan_overage_prices (plan_code, metric, billing_cycle, currency, unit_amount_decimal, '
        'lookup_key, stripe_price_id, active) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)',
        [(a['code'], m, i, c, v['unit_amount_decimal'], v['lookup_key'], v['stripe_price_id'], v['active'])
         for m, q in a['quotas'].items() for (i, c), v in q['overage'].items()])
    action = 'create' if not before else ('delete' if plan.spec['state'] == 'absent' else 'update')
    audit(cur, 'plan', a['code'], action, before or None, public(a))


# Main -----------------------------------------------------------------------

def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(stripe_argument_spec())
    argument_spec.update(plan_options(code_required=False))
    argument_spec['plans'] = dict(type='list', elements='dict')
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[('code', 'plans')], required_one_of=[('code', 'plans')])
    p = module.params
    if p['plans'] is not None:
        entries = []
        for i, entry in enumerate(p['plans']):
            unknown = sorted(set(entry) - set(PLAN_KEYS))
            if unknown:
                module.fail_json(msg='plans[%d]: unsupported option(s) %s; supported: %s'
                                     % (i, ', '.join(unknown), ', '.join(PLAN_KEYS)))
            entries.append(('plans[%d].' % i, entry))
    else:
        entries = [('', dict((k, p[k]) for k in PLAN_KEYS))]

    conn = connect(module)
    client = None
    try:
        require_schema(module, conn, dict(changed=True, plans=[], actions=[], api_calls=api_calls(None)))
        if conn.execute("SELECT to_regclass('platform.plan_overage_prices') IS NULL AS old").fetchone()['old']:
            module.fail_json(msg='The platform schema predates billing (migration 0002): run '
                                 'selfbase.platform.platform_schema first.')
        cur = conn.cursor()
        if not module.check_mode:
            control_lock(cur, LOCK_KEY)
        metrics = dict((r['name'], r['unit']) for r in cur.execute('SELECT name, unit FROM platform.metrics'))
        specs = [normalise_plan(entry, prefix, metrics) for prefix, entry in entries]
        check_unique_codes(specs)
        db = read_db(cur, [s['code'] for s in specs])

        client = StripeClient(module)
        stripe = StripeState(client)
        stripe.read_products(module)
        overage = [(s, m) for s in specs if s['state'] == 'present' for m, q in (s['quotas'] or {}).items() if q['overage']]
        if overage:
            stripe.read_meters()
            for spec, metric in overage:
                if metric not in stripe.meters:
                    index = list(spec['quotas']).index(metric)
                    raise BillingError('%squotas[%d].metric: no active Stripe billing meter has event_name %s; create '
                                       'it with selfbase.platform.billing_meter first' % (spec['prefix'], index, metric))
        keys = []
        for spec in specs:
            if spec['state'] != 'present':
                continue
            for (interval, currency) in spec['prices'] or ():
                keys.append(lookup_key(spec['code'], interval, currency))
                for metric, q in (spec['quotas'] or {}).items():
                    if q['overage']:
                        keys.append(overage_lookup_key(spec['code'], interval, currency, metric))
            old = db.get(spec['code'])
            for entry in (old['prices'].values() if old else ()):
                keys.append(entry['lookup_key'])
            for q in (old['quotas'].values() if old else ()):
                keys.extend(e['lookup_key'] for e in q['overage'].values())
        stripe.read_prices([k for k in keys if k])

        plans = []
        for spec in specs:
            plan = Plan(spec, db.get(spec['code']), stripe.products.get(spec['code']))
            plan.after = plan_present(plan, stripe) if spec['state'] == 'present' else plan_absent(plan, stripe)
            _prices_on_an_active_product(plan)
            plans.append(plan)

        results, actions, changed = [], [], False
        for plan in plans:
            before, after = public(plan.db), public(plan.after)
            plan.changed = bool(plan.writes) or before != after
            changed = changed or plan.changed
            actions.extend(w['label'] for w in plan.writes)
            plan.before = before
        if changed and not module.check_mode:
            for plan in plans:
                run_stripe(client, plan)
            for plan in plans:
                if plan.after is not None and public(plan.after) != plan.before:
                    write_db(cur, plan, plan.before)
            conn.commit()
            db = read_db(cur, [s['code'] for s in specs])
            for plan in plans:
                plan.after = db.get(plan.code)
        conn.rollback()
        diff = dict(before=[], after=[])
        for plan in plans:
            after = public(plan.after)
            results.append(after)
            if plan.changed:
                diff['before'].append(plan.before)
                diff['after'].append(after)
    except BillingError as e:
        module.fail_json(msg=str(e), api_calls=api_calls(client))
    except StripeError as e:
        module.fail_json(msg='Stripe refused a request%s: %s%s' % (
            ' (param %s)' % e.param if e.param else '', e.message,
            '; nothing was written to the database, run again to finish' if not module.check_mode else ''),
            api_calls=api_calls(client))
    except DatabaseError as e:
        conn.rollback()
        module.fail_json(msg='The database refused the change, nothing was written there: %s' % str(e).strip(),
                         api_calls=api_calls(client))
    finally:
        conn.close()

    result = dict(changed=changed, plans=results, actions=actions, api_calls=api_calls(client))
    if module._diff:
        result['diff'] = diff if len(plans) > 1 else dict(before=diff['before'][0] if diff['before'] else results[0],
                                                          after=results[0])
    module.exit_json(**result)


if __name__ == '__main__':
    main()
