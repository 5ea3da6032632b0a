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
    type: str
  billing_cycle:
    description: Billing interval. Defaults to the tenant's billing cycle.
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
        unpaid; the module never creates a second subscription while one is C(incomplete).
    type: str
    choices: [error_if_incomplete, allow_incomplete, default_incomplete]
    default: error_if_incomplete
  email:
    description: Billing e-mail of the Stripe customer. Compared only when set.
    type: str
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
    description: Shows the subscription mirror before and after, in the shape of RV(subscription).
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

import datetime
import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.billing import (
    BillingError, INTERVALS, PRORATION_BEHAVIORS, check_currency)
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import (
    DatabaseError, audit, connect, jsonb, postgres_argument_spec, require_schema)
from ansible_collections.selfbase.platform.plugins.module_utils.stripe_api import (
    api_calls, StripeClient, StripeError, idempotency_key, stripe_argument_spec)

# Stripe status -> tenant status; statuses not listed leave the tenant alone.
TENANT_STATUS = dict(trialing='trial', active='active', incomplete='past_due', past_due='past_due', unpaid='past_due',
                     paused='past_due', canceled='canceled', incomplete_expired='canceled')
ENDED = ('canceled', 'incomplete_expired')
KEEP_TENANT_STATUS = ('suspended', 'deleted')
MIRROR = ('stripe_customer_id', 'stripe_subscription_id', 'stripe_item_id', 'stripe_price_id', 'metered_items',
          'plan', 'billing_cycle', 'currency', 'status', 'current_period_start', 'current_period_end', 'trial_end',
          'cancel_at_period_end', 'canceled_at')
TIMES = ('current_period_start', 'current_period_end', 'trial_end', 'canceled_at')


def _epoch(value):
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return int(value.timestamp())
    return int(value)


def _iso(epoch):
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


def _ts(epoch):
    return None if epoch is None else datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)


def public(slug, state):
    if not state:
        return {}
    out = dict(tenant=slug)
    for k in MIRROR:
        out[k] = _iso(state[k]) if k in TIMES else state[k]
    return out


# Reading ---------------------------------------------------------------------

def read_tenant(cur, slug):
    return cur.execute('SELECT id, slug, name, status, plan_code, billing_cycle, trial_ends_at, stripe_customer_id '
                       'FROM platform.tenants WHERE slug = %s', (slug,)).fetchone()


def read_mirror(cur, tenant_id):
    row = cur.execute('SELECT * FROM platform.subscriptions WHERE tenant_id = %s', (tenant_id,)).fetchone()
    if row is None:
        return None
    state = dict((k, row[k]) for k in MIRROR if k != 'plan')
    state['plan'] = row['plan_code']
    for k in TIMES:
        state[k] = _epoch(state[k])
    return state


def read_plan_prices(cur, plan, cycle):
    prices = cur.execute('SELECT currency, stripe_price_id, active, unit_amount FROM platform.plan_prices '
                         'WHERE plan_code = %s AND billing_cycle = %s', (plan, cycle)).fetchall()
    metered = cur.execute('SELECT metric, currency, stripe_price_id FROM platform.plan_overage_prices '
                          'WHERE plan_code = %s AND billing_cycle = %s AND active', (plan, cycle)).fetchall()
    return prices, metered


def resolve(module, cur, tenant, mirror):
    """The plan, cycle, currency and Stripe prices the subscription should have. Raises BillingError."""
    p = module.params
    plan_code = p['plan'] or tenant['plan_code']
    if plan_code is None:
        raise BillingError('plan: tenant %s has no plan; give one' % tenant['slug'])
    plan = cur.execute('SELECT code, active, trial_days FROM platform.plans WHERE code = %s', (plan_code,)).fetchone()
    if plan is None:
        raise BillingError('plan: unknown plan %r' % plan_code)
    cycle = p['billing_cycle'] or tenant['billing_cycle']
    prices, metered = read_plan_prices(cur, plan_code, cycle)
    usable = dict((r['currency'], r['stripe_price_id']) for r in prices if r['active'] and r['stripe_price_id'])
    if not usable:
        raise BillingError('billing_cycle: plan %s has no active Stripe price for the %s cycle; add one with '
                           'selfbase.platform.billing_plan or choose another cycle' % (plan_code, cycle))
    if p['currency'] is not None:
        currency = check_currency(p['currency'], 'currency')
    elif mirror and mirror['currency'] in usable and mirror['status'] != 'canceled':
        currency = mirror['currency']
    elif len(usable) == 1:
        currency = list(usable)[0]
    else:
        raise BillingError('currency: plan %s has %s prices in %s; say which one'
                           % (plan_code, cycle, ', '.join(sorted(usable))))
    if currency not in usable:
        raise BillingError('currency: plan %s has no active %s price in %s (it has: %s)'
                           % (plan_code, cycle, currency, ', '.join(sorted(usable))))
    amount = dict((r['currency'], r['unit_amount']) for r in prices)[currency]
    return dict(plan=plan_code, plan_active=plan['active'], trial_days=plan['trial_days'], cycle=cycle,
                currency=currency, price=usable[currency], amount=amount,
                metered=dict((r['metric'], r['stripe_price_id']) for r in metered
                             if r['currency'] == currency and r['stripe_price_id']))


def find_customer(module, client, tenant):
    if tenant['stripe_customer_id']:
        try:
            customer = client.get('/v1/customers/%s' % tenant['stripe_customer_id'])
            if not customer.get('deleted'):
                return customer
        except StripeError as e:
            if e.status != 404:
                raise
        module.warn('Stripe customer %s stored for tenant %s no longer exists; looking it up by metadata.tenant_id'
                    % (tenant['stripe_customer_id'], tenant['slug']))
    found = client.list('/v1/customers/search', {'query': "metadata['tenant_id']:'%s'" % tenant['id']})
    if not found and module.params['email']:
        # the search lags about a minute behind writes; a list by email does not
        found = [c for c in client.list('/v1/customers', {'email': module.params['email']})
                 if (c.get('metadata') or {}).get('tenant_id') == str(tenant['id'])]
    if len(found) > 1:
        module.warn('Stripe has %d customers with metadata.tenant_id=%s; using the oldest, %s'
                    % (len(found), tenant['id'], min(found, key=lambda c: c.get('created', 0))['id']))
    return min(found, key=lambda c: c.get('created', 0)) if found else None


def find_subscription(module, client, customer, mirror):
    # Stripe lists every status but canceled by default; an expired incomplete one is over too
    subs = [s for s in client.list('/v1/subscriptions', {'customer': customer['id']}) if s['status'] not in ENDED]
    if not subs:
        return None
    stored = mirror and mirror['stripe_subscription_id']
    for sub in subs:
        if sub['id'] == stored:
            chosen = sub
            break
    else:
        chosen = min(subs, key=lambda s: s.get('created', 0))
    if len(subs) > 1:
        module.warn('Stripe customer %s has %d open subscriptions; managing %s only'
                    % (customer['id'], len(subs), chosen['id']))
    return chosen


def _items(sub):
    data = (sub.get('items') or {}).get('data') or []
    licensed = [i for i in data if ((i.get('price') or {}).get('recurring') or {}).get('usage_type') != 'metered']
    metered = [i for i in data if i not in licensed]
    return (licensed[0] if licensed else None), metered


def mirror_of(sub, customer_id, want, metric_by_price):
    """The platform.subscriptions row for a Stripe subscription."""
    base, metered = _items(sub)
    first = base or ((sub.get('items') or {}).get('data') or [{}])[0]
    price = (base or {}).get('price') or {}
    return dict(
        stripe_customer_id=customer_id, stripe_subscription_id=sub['id'], stripe_item_id=base and base['id'],
        stripe_price_id=price.get('id'),
        metered_items=dict((metric_by_price.get(i['price']['id'], i['price']['id']), dict(item=i['id'],
                                                                                          price=i['price']['id']))
                           for i in metered),
        plan=(sub.get('metadata') or {}).get('plan_code') or want['plan'],
        billing_cycle=(price.get('recurring') or {}).get('interval') or want['cycle'],
        currency=sub.get('currency') or price.get('currency'), status=sub['status'],
        current_period_start=_epoch(first.get('current_period_start', sub.get('current_period_start'))),
        current_period_end=_epoch(first.get('current_period_end', sub.get('current_period_end'))),
        trial_end=_epoch(sub.get('trial_end')), cancel_at_period_end=bool(sub.get('cancel_at_period_end')),
        canceled_at=_epoch(sub.get('canceled_at')))


def new_status(p, params, customer, amount):
    """The status Stripe gives a new subscription. Raises BillingError where Stripe would refuse it
    (error_if_incomplete without a payment method)."""
    if params.get('trial_period_days'):
        return 'trialing'
    if params.get('collection_method') == 'send_invoice' or not amount:
        return 'active'
    settings = (customer or {}).get('invoice_settings') or {}
    pays = bool(settings.get('default_payment_method') or (customer or {}).get('default_source'))
    if p['payment_behavior'] == 'default_incomplete' or (not pays and p['payment_behavior'] == 'allow_incomplete'):
        return 'incomplete'
    if not pays:
        raise BillingError('payment_behavior: the first invoice of tenant %s must be paid now, but its Stripe customer '
                           'has no default payment method, so Stripe would refuse the subscription '
                           '(error_if_incomplete). Attach a payment method, give a trial (trial_days), use '
                           'collection_method=send_invoice, or payment_behavior=allow_incomplete or '
                           'default_incomplete' % p['tenant'])
    return 'active'


# Main -----------------------------------------------------------------------

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
        update_tenant=dict(type='bool', default=True),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_if=[('collection_method', 'send_invoice', ('days_until_due',))])
    p = module.params
    slug = p['tenant']
    cancel_now = p['state'] == 'absent' or p['cancel'] == 'immediately'

    conn = connect(module)
    client = None
    actions = []
    try:
        require_schema(module, conn, dict(changed=True, subscription={}, actions=[],
                                          api_calls=api_calls(None)))
        if conn.execute("SELECT to_regclass('platform.plan_overage_prices') IS NULL AS old").fetchone()['old']:
            module.fail_json(msg='The platform schema predates billing (migration 0002): run '
                                 'selfbase.platform.platform_schema first.')
        if p['trial_days'] is not None and not 0 <= p['trial_days'] <= 730:
            raise BillingError('trial_days: must be from 0 to 730 days; got %d' % p['trial_days'])
        if p['days_until_due'] is not None and p['days_until_due'] < 0:
            raise BillingError('days_until_due: must be 0 or more; got %d' % p['days_until_due'])
        cur = conn.cursor()
        tenant = read_tenant(cur, slug)
        if tenant is None:
            raise BillingError('tenant: unknown tenant %r' % slug)
        if not module.check_mode:
            # one run per tenant at a time; the row lock is held until the database write
            cur.execute('SELECT 1 FROM platform.tenants WHERE id = %s FOR UPDATE', (tenant['id'],))
        mirror = read_mirror(cur, tenant['id'])
        want = None
        if not cancel_now:
            if tenant['status'] == 'deleted':
                raise BillingError('tenant: %s is deleted; restore it before subscribing it' % slug)
            want = resolve(module, cur, tenant, mirror)

        client = StripeClient(module)
        customer = find_customer(module, client, tenant)
        sub = find_subscription(module, client, customer, mirror) if customer else None
        if sub is not None and sub['status'] in ENDED:
            sub = None
        ended = None
        if sub is None and customer and mirror and mirror['stripe_subscription_id'] and mirror['status'] not in ENDED:
            # Stripe ended it in between (dunning cancels, an incomplete one expires): mirror how it ended
            try:
                ended = client.get('/v1/subscriptions/%s' % mirror['stripe_subscription_id'])
            except StripeError as e:
                if e.status != 404:
                    raise
        base, metered_items = _items(sub) if sub else (None, [])
        if not cancel_now:
            collection = p['collection_method'] or (sub or {}).get('collection_method') or 'charge_automatically'
            if p['days_until_due'] is not None and collection != 'send_invoice':
                raise BillingError('days_until_due: only applies with collection_method=send_invoice (the '
                                   'subscription collects %s); Stripe refuses it otherwise' % collection)
            if sub is not None and sub.get('currency') and sub['currency'] != want['currency']:
                raise BillingError('currency: subscription %s of tenant %s is in %s, and Stripe cannot change the '
                                   'currency of a subscription; cancel it (cancel=immediately) and subscribe again in '
                                   '%s' % (sub['id'], slug, sub['currency'], want['currency']))

        # Plan the writes ----------------------------------------------------
        writes = []
        if not cancel_now:
            if customer is None:
                params = {'name': tenant['name'], 'metadata': {'tenant_id': str(tenant['id']), 'tenant_slug': slug}}
                if p['email']:
                    params['email'] = p['email']
                writes.append(dict(what='customer', label='create customer for %s' % slug, params=params))
            else:
                change = {}
                if customer.get('name') != tenant['name']:
                    change['name'] = tenant['name']
                if p['email'] is not None and (customer.get('email') or '') != p['email']:
                    change['email'] = p['email']
                if (customer.get('metadata') or {}).get('tenant_id') != str(tenant['id']):
                    change['metadata'] = {'tenant_id': str(tenant['id']), 'tenant_slug': slug}
                if change:
                    writes.append(dict(what='customer_update', label='update customer %s (%s)' % (
                        customer['id'], ', '.join(sorted(change))), params=change,
                        before=dict(name=customer.get('name'), email=customer.get('email'))))
            meta = {'tenant_id': str(tenant['id']), 'plan_code': want['plan'], 'billing_cycle': want['cycle']}
            if sub is None:
                swap_or_new = True
                items = [{'price': want['price']}] + [{'price': pid} for _m, pid in sorted(want['metered'].items())]
                params = {'items': items, 'metadata': meta}
                first_ever = mirror is None or not mirror['stripe_subscription_id']
                days = p['trial_days'] if p['trial_days'] is not None else want['trial_days']
                if first_ever and days:
                    params['trial_period_days'] = days
                if p['cancel'] == 'at_period_end':
                    params['cancel_at_period_end'] = 'true'
                if p['collection_method']:
                    params['collection_method'] = p['collection_method']
                if p['days_until_due'] is not None:
                    params['days_until_due'] = p['days_until_due']
                params['payment_behavior'] = p['payment_behavior']
                status = new_status(p, params, customer, want['amount'])
                writes.append(dict(what='subscription', label='create subscription on %s%s%s' % (
                    want['price'], ' with a %d-day trial' % days if 'trial_period_days' in params else '',
                    '' if status in ('active', 'trialing') else ' (%s until paid)' % status),
                    params=params, previous=mirror and mirror['stripe_subscription_id'], status=status))
            else:
                params, items = {}, []
                swap_or_new = base is None or base['price']['id'] != want['price']
                if swap_or_new:
                    if base is None:
                        items.append({'price': want['price']})
                    else:
                        items.append({'id': base['id'], 'price': want['price']})
                have = dict((i['price']['id'], i['id']) for i in metered_items)
                wanted = set(want['metered'].values())
                items.extend({'id': item, 'deleted': 'true'} for pid, item in sorted(have.items()) if pid not in wanted)
                items.extend({'price': pid} for pid in sorted(wanted - set(have)))
                if items:
                    params['items'] = items
                    params['proration_behavior'] = p['proration_behavior']
                if any((sub.get('metadata') or {}).get(k) != v for k, v in meta.items()):
                    params['metadata'] = meta
                if bool(sub.get('cancel_at_period_end')) != (p['cancel'] == 'at_period_end'):
                    params['cancel_at_period_end'] = 'true' if p['cancel'] == 'at_period_end' else 'false'
                if p['collection_method'] and sub.get('collection_method') != p['collection_method']:
                    params['collection_method'] = p['collection_method']
                if p['days_until_due'] is not None and sub.get('days_until_due') != p['days_until_due']:
                    params['days_until_due'] = p['days_until_due']
                if params:
                    what = []
                    if swap_or_new:
                        what.append('price %s -> %s' % (base['price']['id'] if base else None, want['price']))
                    what.extend(k for k in sorted(params) if k not in ('items', 'proration_behavior'))
                    if items and not swap_or_new:
                        what.append('metered items')
                    writes.append(dict(what='subscription_update',
                                       label='update subscription %s (%s)' % (sub['id'], ', '.join(what)),
                                       params=params, before=json.dumps(sub, sort_keys=True, default=str)))
            if swap_or_new and not want['plan_active']:
                raise BillingError('plan: plan %s is not active, so it cannot be subscribed to' % want['plan'])
        elif sub is not None:
            writes.append(dict(what='cancel', label='cancel subscription %s now' % sub['id'], id=sub['id']))
        actions = [w['label'] for w in writes]

        # Predict (check mode) or write Stripe -------------------------------
        customer_id = customer['id'] if customer else None
        metric_by_price = dict((pid, m) for m, pid in (want['metered'] if want else {}).items())
        if module.check_mode or not writes:
            if sub is not None and not writes:
                after = mirror_of(sub, customer_id, want, metric_by_price)
            elif cancel_now:
                after = mirror
                if sub is None and ended is not None:
                    after = mirror_of(ended, customer_id, dict(plan=mirror['plan'], cycle=mirror['billing_cycle']),
                                      metric_by_price)
                if sub is not None:
                    after = mirror_of(sub, customer_id, dict(plan=None, cycle=None), metric_by_price)
                    after.update(status='canceled')
            else:
                after = dict(mirror or dict((k, None) for k in MIRROR))
                after.update(stripe_customer_id=customer_id, plan=want['plan'], billing_cycle=want['cycle'],
                             currency=want['currency'], stripe_price_id=want['price'],
                             cancel_at_period_end=p['cancel'] == 'at_period_end',
                             metered_items=dict((m, dict(item=None, price=pid)) for m, pid in want['metered'].items()))
                if sub is None:
                    params = [w for w in writes if w['what'] == 'subscription'][0]['params']
                    after.update(stripe_subscription_id=None, stripe_item_id=None, canceled_at=None, trial_end=None,
                                 current_period_start=None, current_period_end=None,
                                 status=[w for w in writes if w['what'] == 'subscription'][0]['status'])
                else:
                    old = mirror_of(sub, customer_id, want, metric_by_price)
                    after.update(dict((k, old[k]) for k in ('stripe_subscription_id', 'stripe_item_id', 'status',
                                                            'current_period_start', 'current_period_end',
                                                            'trial_end', 'canceled_at')))
                    for m, v in after['metered_items'].items():
                        v['item'] = old['metered_items'].get(m, {}).get('item')
        else:
            for w in writes:
                if w['what'] == 'customer':
                    customer = client.post('/v1/customers', w['params'],
                                           key=idempotency_key('customer', str(tenant['id']), w['params']))
                    customer_id = customer['id']
                elif w['what'] == 'customer_update':
                    client.post('/v1/customers/%s' % customer_id, w['params'], key=idempotency_key(
                        'customer update', customer_id, w['before'], w['params']))
                elif w['what'] == 'subscription':
                    params = dict(w['params'], customer=customer_id)
                    sub = client.post('/v1/subscriptions', params, key=idempotency_key(
                        'subscription', str(tenant['id']), params, w['previous']))
                elif w['what'] == 'subscription_update':
                    sub = client.post('/v1/subscriptions/%s' % sub['id'], w['params'], key=idempotency_key(
                        'subscription update', sub['id'], w['before'], w['params']))
                elif w['what'] == 'cancel':
                    # invoice_now bills the metered usage not invoiced yet; prorate credits unused licensed time
                    sub = client.delete('/v1/subscriptions/%s' % w['id'], dict(
                        invoice_now=True, prorate=p['proration_behavior'] != 'none'))
            if sub is not None:
                after = mirror_of(sub, customer_id, want or dict(plan=None, cycle=None), metric_by_price)
            else:
                after = mirror

        # The database ------------------------------------------------------
        before_public, after_public = public(slug, mirror), public(slug, after)
        tenant_after = dict(tenant)
        if after is not None and p['update_tenant']:
            if after.get('stripe_customer_id'):
                tenant_after['stripe_customer_id'] = after['stripe_customer_id']
            if not cancel_now:
                tenant_after['plan_code'], tenant_after['billing_cycle'] = after['plan'], after['billing_cycle']
            if after['status'] == 'trialing' and after['trial_end']:
                tenant_after['trial_ends_at'] = _ts(after['trial_end'])
            status = TENANT_STATUS.get(after['status'])
            if status and tenant['status'] not in KEEP_TENANT_STATUS and (after['stripe_subscription_id']
                                                                          or module.check_mode):
                tenant_after['status'] = status
        elif after is not None and after.get('stripe_customer_id'):
            tenant_after['stripe_customer_id'] = after['stripe_customer_id']
        tenant_changed = any(_epoch(tenant_after[k]) != _epoch(tenant[k]) if k == 'trial_ends_at'
                             else tenant_after[k] != tenant[k] for k in tenant)
        changed = bool(writes) or before_public != after_public or tenant_changed
        if changed and not module.check_mode:
            if tenant_changed:
                cur.execute('UPDATE platform.tenants SET stripe_customer_id = %s, plan_code = %s, billing_cycle = %s, '
                            'trial_ends_at = %s, status = %s, updated_at = now() WHERE id = %s',
                            (tenant_after['stripe_customer_id'], tenant_after['plan_code'],
                             tenant_after['billing_cycle'], tenant_after['trial_ends_at'], tenant_after['status'],
                             tenant['id']))
            if after is not None and before_public != after_public:
                cur.execute(
                    'INSERT INTO platform.subscriptions AS s (tenant_id, stripe_customer_id, stripe_subscription_id, '
                    'stripe_item_id, stripe_price_id, metered_items, plan_code, billing_cycle, currency, status, '
                    'current_period_start, current_period_end, trial_end, cancel_at_period_end, canceled_at) '
                    'VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id) DO UPDATE '
                    'SET stripe_customer_id = EXCLUDED.stripe_customer_id, '
                    'stripe_subscription_id = EXCLUDED.stripe_subscription_id, stripe_item_id = EXCLUDED.stripe_item_id, '
                    'stripe_price_id = EXCLUDED.stripe_price_id, metered_items = EXCLUDED.metered_items, '
                    'plan_code = EXCLUDED.plan_code, billing_cycle = EXCLUDED.billing_cycle, '
                    'currency = EXCLUDED.currency, status = EXCLUDED.status, '
                    'current_period_start = EXCLUDED.current_period_start, '
                    'current_period_end = EXCLUDED.current_period_end, trial_end = EXCLUDED.trial_end, '
                    'cancel_at_period_end = EXCLUDED.cancel_at_period_end, canceled_at = EXCLUDED.canceled_at, '
                    'updated_at = now()',
                    (tenant['id'], after['stripe_customer_id'], after['stripe_subscription_id'], after['stripe_item_id'],
                     after['stripe_price_id'], jsonb(after['metered_items'] or {}), after['plan'],
                     after['billing_cycle'], after['currency'], after['status'], _ts(after['current_period_start']),
                     _ts(after['current_period_end']), _ts(after['trial_end']), after['cancel_at_period_end'],
                     _ts(after['canceled_at'])))
                audit(cur, 'subscription', slug, 'create' if mirror is None else 'update', before_public or None,
                      after_public, tenant_id=tenant['id'])
            conn.commit()
        conn.rollback()
    except BillingError as e:
        module.fail_json(msg=str(e), actions=actions, api_calls=api_calls(client))
    except StripeError as e:
        module.fail_json(msg='Stripe refused a request%s: %s%s' % (
            ' (param %s)' % e.param if e.param else '', e.message,
            '; the database was not written, run again to finish' if not module.check_mode else ''),
            actions=actions, api_calls=api_calls(client))
    except DatabaseError as e:
        conn.rollback()
        module.fail_json(msg='The database refused the change, nothing was written there: %s' % str(e).strip(),
                         actions=actions, api_calls=api_calls(client))
    finally:
        conn.close()

    result = dict(changed=changed, subscription=after_public, actions=actions, api_calls=api_calls(client))
    if module._diff:
        result['diff'] = dict(before=before_public, after=after_public)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
