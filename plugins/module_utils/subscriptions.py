# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tenant's Stripe subscription as declarative state (the selfbase.platform.tenant_subscription module), in
steps: resolve what is wanted, find what Stripe has, plan the writes, predict or apply them, and mirror the
result into platform.subscriptions and platform.tenants."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import json

from ansible_collections.selfbase.platform.plugins.module_utils.billing import BillingError, check_currency
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import audit, jsonb, require_schema
from ansible_collections.selfbase.platform.plugins.module_utils.stripe_api import StripeError, idempotency_key
from ansible_collections.selfbase.platform.plugins.module_utils.tax import (
    check_automatic_tax, check_tax_params, customer_tax_params, tax_id_writes, tax_view)

# Stripe status -> tenant status; statuses not listed leave the tenant alone.
TENANT_STATUS = dict(trialing='trial', active='active', incomplete='past_due', past_due='past_due', unpaid='past_due',
                     paused='past_due', canceled='canceled', incomplete_expired='canceled')
ENDED = ('canceled', 'incomplete_expired')
KEEP_TENANT_STATUS = ('suspended', 'deleted')
MIRROR = ('stripe_customer_id', 'stripe_subscription_id', 'stripe_item_id', 'stripe_price_id', 'metered_items',
          'plan', 'billing_cycle', 'currency', 'status', 'current_period_start', 'current_period_end', 'trial_end',
          'cancel_at_period_end', 'canceled_at', 'discount')
# Subscriptions are read and written with their discount's coupon (the mirror's discount, migration 0013)
EXPAND = ['discounts.source.coupon']
TAX_OPTIONS = ('automatic_tax', 'billing_address', 'tax_exempt', 'tax_ids')
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
    return cur.execute('SELECT id, slug, name, status, plan_code, plan_source, billing_cycle, trial_ends_at, '
                       'stripe_customer_id FROM platform.tenants WHERE slug = %s', (slug,)).fetchone()


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


def resolve(p, cur, tenant, mirror):
    """The plan, cycle, currency and Stripe prices the subscription should have. Raises BillingError."""
    plan_code, cycle = p['plan'] or tenant['plan_code'], p['billing_cycle'] or tenant['billing_cycle']
    kept = None
    if tenant['plan_source'] == 'customer' and (plan_code, cycle) != (tenant['plan_code'], tenant['billing_cycle']):
        # the plan the customer chose in Stripe stands (migration 0017); the tenants module hands it back
        kept = dict(slug=tenant['slug'], wanted=dict(plan=plan_code, billing_cycle=cycle),
                    current=dict(plan=tenant['plan_code'], billing_cycle=tenant['billing_cycle']))
        plan_code, cycle = tenant['plan_code'], tenant['billing_cycle']
    if plan_code is None:
        raise BillingError('plan: tenant %s has no plan; give one' % tenant['slug'])
    plan = cur.execute('SELECT code, active, trial_days FROM platform.plans WHERE code = %s', (plan_code,)).fetchone()
    if plan is None:
        raise BillingError('plan: unknown plan %r' % plan_code)
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
    return dict(plan=plan_code, plan_active=plan['active'], trial_days=plan['trial_days'], cycle=cycle, kept=kept,
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
    subs = [s for s in client.list('/v1/subscriptions', {'customer': customer['id'],
                                                         'expand': ['data.' + e for e in EXPAND]})
            if s['status'] not in ENDED]
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


def find_promotion_code(client, p, customer, want, mirror, sub):
    """The active promotion code p names, usable by this tenant; raises BillingError where Stripe would refuse it."""
    code = p['promotion_code']
    found = [c for c in client.list('/v1/promotion_codes', {'code': code, 'active': 'true'})
             if c.get('customer') in (None, customer and customer['id'])]
    if not found:
        raise BillingError('promotion_code: no active promotion code %s that tenant %s can redeem; create it with '
                           'selfbase.platform.billing_coupon' % (code, p['tenant']))
    promo = max(found, key=lambda c: (c.get('customer') is not None, c.get('created', 0)))
    promo = dict(promo, coupon=client.get('/v1/coupons/%s' % promo['promotion']['coupon']))
    off = discount_view(promo['coupon'], promo['id'], want['currency'], None)
    if off['percent_off'] is None and off['amount_off'] is None:
        raise BillingError('promotion_code: the coupon of %s takes an amount off in %s only, and the subscription is '
                           'in %s; add a currency option to the coupon' % (code, promo['coupon'].get('currency'),
                                                                           want['currency']))
    r = promo.get('restrictions') or {}
    minimum = ((r.get('currency_options') or {}).get(want['currency']) or {}).get('minimum_amount')
    if minimum is None and r.get('minimum_amount_currency') == want['currency']:
        minimum = r.get('minimum_amount')
    if minimum is not None and (want['amount'] or 0) < minimum:
        raise BillingError('promotion_code: %s needs a first invoice of at least %d (minor units of %s); plan %s '
                           'costs %d' % (code, minimum, want['currency'], want['plan'], want['amount'] or 0))
    earlier = (mirror and mirror['stripe_subscription_id'] and (sub is None or sub['id'] != mirror[
        'stripe_subscription_id'])) or (sub is not None and sub.get('latest_invoice'))
    if r.get('first_time_transaction') and earlier:
        raise BillingError('promotion_code: %s is for first-time customers only, and tenant %s has paid or been '
                           'invoiced before' % (code, p['tenant']))
    return promo


def applied_code(sub):
    """The promotion code the module applied to a subscription (kept in its metadata, so that a discount that ran
    out is not redeemed again)."""
    return ((sub or {}).get('metadata') or {}).get('promotion_code')


def discount_view(coupon, promotion_code, currency, end):
    """The mirror's discount (as stripe_event_apply writes it): the coupon's percent off, or its amount off in the
    subscription's currency, its duration, and when the discount ends."""
    coupon = coupon if isinstance(coupon, dict) else {'id': coupon}
    amount = coupon.get('amount_off') if coupon.get('currency') == currency else None
    if amount is None:
        amount = ((coupon.get('currency_options') or {}).get(currency) or {}).get('amount_off')
    return dict(coupon=coupon.get('id'), promotion_code=promotion_code, percent_off=coupon.get('percent_off'),
                amount_off=amount, duration=coupon.get('duration'), end=end)


def discount_of(sub):
    """The first discount of a subscription read with EXPAND, or None."""
    for d in (sub or {}).get('discounts') or []:
        if isinstance(d, dict):
            return discount_view((d.get('source') or {}).get('coupon'), d.get('promotion_code'), sub.get('currency'),
                                 d.get('end'))
    return None


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
        canceled_at=_epoch(sub.get('canceled_at')), discount=discount_of(sub),
        # not compared (public() leaves it out): MRR counts from it
        started_at=_epoch(sub.get('start_date')))


def default_payment(customer):
    """The customer's default payment method (or source) that Stripe charges, or None."""
    settings = (customer or {}).get('invoice_settings') or {}
    return settings.get('default_payment_method') or (customer or {}).get('default_source')


def new_status(p, params, customer, amount):
    """The status Stripe gives a new subscription. Raises BillingError where Stripe would refuse it
    (error_if_incomplete without a payment method)."""
    if params.get('trial_period_days'):
        return 'trialing'
    if params.get('collection_method') == 'send_invoice' or not amount:
        return 'active'
    pays = bool(default_payment(customer))
    if p['payment_behavior'] == 'default_incomplete' or (not pays and p['payment_behavior'] == 'allow_incomplete'):
        return 'incomplete'
    if not pays:
        raise BillingError('payment_behavior: the first invoice of tenant %s must be paid now, but its Stripe customer '
                           'has no default payment method, so Stripe would refuse the subscription '
                           '(error_if_incomplete). Attach a payment method, give a trial (trial_days), use '
                           'collection_method=send_invoice, or payment_behavior=allow_incomplete or '
                           'default_incomplete' % p['tenant'])
    return 'active'


# Planning (plain dicts in, plain dicts out) -----------------------------------

def check_params(p):
    check_tax_params(p)
    if p['trial_days'] is not None and not 0 <= p['trial_days'] <= 730:
        raise BillingError('trial_days: must be from 0 to 730 days; got %d' % p['trial_days'])
    if p['days_until_due'] is not None and p['days_until_due'] < 0:
        raise BillingError('days_until_due: must be 0 or more; got %d' % p['days_until_due'])


def check_subscription(p, sub, want):
    """Refuse what Stripe would refuse on the subscription found."""
    collection = p['collection_method'] or (sub or {}).get('collection_method') or 'charge_automatically'
    if p['days_until_due'] is not None and collection != 'send_invoice':
        raise BillingError('days_until_due: only applies with collection_method=send_invoice (the '
                           'subscription collects %s); Stripe refuses it otherwise' % collection)
    if sub is not None and sub.get('currency') and sub['currency'] != want['currency']:
        raise BillingError('currency: subscription %s of tenant %s is in %s, and Stripe cannot change the '
                           'currency of a subscription; cancel it (cancel=immediately) and subscribe again in '
                           '%s' % (sub['id'], p['tenant'], sub['currency'], want['currency']))


def customer_writes(p, tenant, customer):
    slug = tenant['slug']
    if customer is None:
        params = {'name': tenant['name'], 'metadata': {'tenant_id': str(tenant['id']), 'tenant_slug': slug}}
        if p['email']:
            params['email'] = p['email']
        params.update(customer_tax_params(p, None))
        return [dict(what='customer', label='create customer for %s' % slug, params=params)]
    change = customer_tax_params(p, customer)
    if customer.get('name') != tenant['name']:
        change['name'] = tenant['name']
    if p['email'] is not None and (customer.get('email') or '') != p['email']:
        change['email'] = p['email']
    if (customer.get('metadata') or {}).get('tenant_id') != str(tenant['id']):
        change['metadata'] = {'tenant_id': str(tenant['id']), 'tenant_slug': slug}
    if not change:
        return []
    return [dict(what='customer_update', label='update customer %s (%s)' % (
        customer['id'], ', '.join(sorted(k for k in change if k != 'tax'))), params=change, before=dict(
            name=customer.get('name'), email=customer.get('email'), address=customer.get('address'),
            tax_exempt=customer.get('tax_exempt')))]


def create_write(p, customer, mirror, want, meta):
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
    if p['automatic_tax']:
        params['automatic_tax'] = {'enabled': 'true'}
    if want.get('promotion'):
        params['discounts'] = [{'promotion_code': want['promotion']['id']}]
        meta = params['metadata'] = dict(meta, promotion_code=p['promotion_code'])
    status = new_status(p, params, customer, want['amount'])
    return dict(what='subscription', label='create subscription on %s%s%s' % (
        want['price'], ' with a %d-day trial' % days if 'trial_period_days' in params else '',
        '' if status in ('active', 'trialing') else ' (%s until paid)' % status),
        params=params, previous=mirror and mirror['stripe_subscription_id'], status=status,
        # in the key: a retry after the customer saved another card must not replay a declined first payment (402)
        pays_with=default_payment(customer))


def update_write(p, sub, want, meta):
    """The update a subscription needs, or None; and whether its licensed price changes."""
    base, metered_items = _items(sub)
    params, items = {}, []
    swap = base is None or base['price']['id'] != want['price']
    if swap:
        items.append({'price': want['price']} if base is None else {'id': base['id'], 'price': want['price']})
    have = dict((i['price']['id'], i['id']) for i in metered_items)
    wanted = set(want['metered'].values())
    items.extend({'id': item, 'deleted': 'true'} for pid, item in sorted(have.items()) if pid not in wanted)
    items.extend({'price': pid} for pid in sorted(wanted - set(have)))
    if items:
        params['items'] = items
        params['proration_behavior'] = p['proration_behavior']
    applied = applied_code(sub)
    if want.get('promotion') and applied != p['promotion_code']:
        params['discounts'] = [{'promotion_code': want['promotion']['id']}]
        meta = dict(meta, promotion_code=p['promotion_code'])
    elif p['promotion_code'] == '' and (sub.get('discounts') or applied):
        params['discounts'] = ''
        meta = dict(meta, promotion_code='')
    if any((sub.get('metadata') or {}).get(k) != (v or None) for k, v in meta.items()):
        params['metadata'] = meta
    if bool(sub.get('cancel_at_period_end')) != (p['cancel'] == 'at_period_end'):
        params['cancel_at_period_end'] = 'true' if p['cancel'] == 'at_period_end' else 'false'
    if p['collection_method'] and sub.get('collection_method') != p['collection_method']:
        params['collection_method'] = p['collection_method']
    if p['days_until_due'] is not None and sub.get('days_until_due') != p['days_until_due']:
        params['days_until_due'] = p['days_until_due']
    if p['automatic_tax'] is not None and bool((sub.get('automatic_tax') or {}).get('enabled')) != p['automatic_tax']:
        params['automatic_tax'] = {'enabled': 'true' if p['automatic_tax'] else 'false'}
    if not params:
        return None, swap
    what = ['price %s -> %s' % (base['price']['id'] if base else None, want['price'])] if swap else []
    what.extend(k for k in sorted(params) if k not in ('items', 'proration_behavior', 'discounts'))
    if 'discounts' in params:
        what.append('promotion code %s' % p['promotion_code'] if p['promotion_code'] else 'no discount')
    if items and not swap:
        what.append('metered items')
    return dict(what='subscription_update', label='update subscription %s (%s)' % (sub['id'], ', '.join(what)),
                params=params, before=json.dumps(sub, sort_keys=True, default=str)), swap


# What each update parameter comes from, to name the option when Stripe would refuse it
UPDATE_OPTION = dict(items='plan', proration_behavior='plan', cancel_at_period_end='cancel',
                     collection_method='collection_method', days_until_due='days_until_due',
                     discounts='promotion_code', automatic_tax='automatic_tax')


def check_incomplete(p, sub, update):
    """Stripe changes only the metadata (and default source) of an incomplete subscription."""
    if update is None or sub.get('status') != 'incomplete':
        return
    options = sorted(set(UPDATE_OPTION.get(k, k) for k in update['params'] if k != 'metadata'))
    if options:
        raise BillingError('%s: subscription %s of tenant %s is incomplete (its first invoice is unpaid), and Stripe '
                           'changes only the metadata of an incomplete subscription; pay the invoice, let it expire '
                           '(23 hours after it was created), or cancel it (cancel=immediately) and subscribe again'
                           % (', '.join(options), sub['id'], p['tenant']))


def plan_writes(p, tenant, customer, sub, mirror, want, tax_ids=None):
    """The Stripe writes, in order, that make the subscription what p asks for (``tax_ids``: the customer's)."""
    if want is None:
        return [dict(what='cancel', label='cancel subscription %s now' % sub['id'], id=sub['id'])] if sub else []
    # the customer's address and tax IDs first: Stripe Tax reads them for the first invoice
    writes = customer_writes(p, tenant, customer) + tax_id_writes(p, customer, tax_ids or [])
    meta = {'tenant_id': str(tenant['id']), 'plan_code': want['plan'], 'billing_cycle': want['cycle']}
    if sub is None:
        writes.append(create_write(p, customer, mirror, want, meta))
        swap = True
    else:
        update, swap = update_write(p, sub, want, meta)
        check_incomplete(p, sub, update)
        writes.extend([update] if update else [])
    if swap and not want['plan_active']:
        raise BillingError('plan: plan %s is not active, so it cannot be subscribed to' % want['plan'])
    return writes


def predict(p, writes, customer_id, sub, ended, mirror, want, metric_by_price):
    """The mirror after the writes, without making them (check mode, or nothing to write)."""
    if sub is not None and not writes:
        return mirror_of(sub, customer_id, want, metric_by_price)
    if want is None:
        if sub is not None:
            return dict(mirror_of(sub, customer_id, dict(plan=None, cycle=None), metric_by_price), status='canceled')
        if ended is not None:
            return mirror_of(ended, customer_id, dict(plan=mirror['plan'], cycle=mirror['billing_cycle']),
                             metric_by_price)
        return mirror
    after = dict(mirror or dict((k, None) for k in MIRROR))
    after.update(stripe_customer_id=customer_id, plan=want['plan'], billing_cycle=want['cycle'],
                 currency=want['currency'], stripe_price_id=want['price'], discount=None,
                 cancel_at_period_end=p['cancel'] == 'at_period_end',
                 metered_items=dict((m, dict(item=None, price=pid)) for m, pid in want['metered'].items()))
    if sub is None:
        create = [w for w in writes if w['what'] == 'subscription'][0]
        after.update(stripe_subscription_id=None, stripe_item_id=None, canceled_at=None, trial_end=None,
                     current_period_start=None, current_period_end=None, status=create['status'])
    else:
        old = mirror_of(sub, customer_id, want, metric_by_price)
        after.update(dict((k, old[k]) for k in ('stripe_subscription_id', 'stripe_item_id', 'status',
                                                'current_period_start', 'current_period_end', 'trial_end',
                                                'canceled_at', 'discount')))
        for m, v in after['metered_items'].items():
            v['item'] = old['metered_items'].get(m, {}).get('item')
    if any('discounts' in w.get('params', {}) for w in writes):
        # when Stripe ends the discount is known once it is redeemed
        promo = want.get('promotion')
        after['discount'] = promo and discount_view(promo['coupon'], promo['id'], want['currency'], None)
    return after


def tenant_after(p, tenant, after, cancel_now, check_mode):
    """The tenant row the subscription leaves (plan, cycle, trial end, status through TENANT_STATUS)."""
    new = dict(tenant)
    if after is not None and p['update_tenant']:
        if after.get('stripe_customer_id'):
            new['stripe_customer_id'] = after['stripe_customer_id']
        if not cancel_now:
            new['plan_code'], new['billing_cycle'] = after['plan'], after['billing_cycle']
        if after['status'] == 'trialing' and after['trial_end']:
            new['trial_ends_at'] = _ts(after['trial_end'])
        status = TENANT_STATUS.get(after['status'])
        if status and tenant['status'] not in KEEP_TENANT_STATUS and (after['stripe_subscription_id'] or check_mode):
            new['status'] = status
    elif after is not None and after.get('stripe_customer_id'):
        new['stripe_customer_id'] = after['stripe_customer_id']
    return new


# Writing ---------------------------------------------------------------------

def apply_writes(client, p, tenant, writes, customer_id, sub):
    """Make the Stripe writes; returns the customer id and the subscription after them."""
    for w in writes:
        if w['what'] == 'customer':
            customer_id = client.post('/v1/customers', w['params'],
                                      key=idempotency_key('customer', str(tenant['id']), w['params']))['id']
        elif w['what'] == 'customer_update':
            client.post('/v1/customers/%s' % customer_id, w['params'], key=idempotency_key(
                'customer update', customer_id, w['before'], w['params']))
        elif w['what'] == 'tax_id':
            client.post('/v1/customers/%s/tax_ids' % customer_id, w['params'],
                        key=idempotency_key('tax id', customer_id, w['before'], w['params']))
        elif w['what'] == 'tax_id_delete':
            try:
                client.delete('/v1/customers/%s/tax_ids/%s' % (customer_id, w['id']))
            except StripeError as e:
                if e.status != 404:  # a retry after it was deleted
                    raise
        elif w['what'] == 'subscription':
            params = dict(w['params'], customer=customer_id, expand=EXPAND)
            sub = client.post('/v1/subscriptions', params, key=idempotency_key(
                'subscription', str(tenant['id']), params, w['previous'], w['pays_with']))
        elif w['what'] == 'subscription_update':
            sub = client.post('/v1/subscriptions/%s' % sub['id'], dict(w['params'], expand=EXPAND),
                              key=idempotency_key('subscription update', sub['id'], w['before'], w['params']))
        elif w['what'] == 'cancel':
            # invoice_now bills the metered usage not invoiced yet; prorate credits unused licensed time
            sub = client.delete('/v1/subscriptions/%s' % w['id'], dict(
                invoice_now=True, prorate=p['proration_behavior'] != 'none', expand=EXPAND))
    return customer_id, sub


_UPSERT = (
    'INSERT INTO platform.subscriptions AS s (tenant_id, stripe_customer_id, stripe_subscription_id, '
    'stripe_item_id, stripe_price_id, metered_items, plan_code, billing_cycle, currency, status, '
    'current_period_start, current_period_end, trial_end, cancel_at_period_end, canceled_at, discount, started_at) '
    'VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (tenant_id) DO UPDATE '
    'SET stripe_customer_id = EXCLUDED.stripe_customer_id, '
    'stripe_subscription_id = EXCLUDED.stripe_subscription_id, stripe_item_id = EXCLUDED.stripe_item_id, '
    'stripe_price_id = EXCLUDED.stripe_price_id, metered_items = EXCLUDED.metered_items, '
    'plan_code = EXCLUDED.plan_code, billing_cycle = EXCLUDED.billing_cycle, '
    'currency = EXCLUDED.currency, status = EXCLUDED.status, '
    'current_period_start = EXCLUDED.current_period_start, '
    'current_period_end = EXCLUDED.current_period_end, trial_end = EXCLUDED.trial_end, '
    'cancel_at_period_end = EXCLUDED.cancel_at_period_end, canceled_at = EXCLUDED.canceled_at, '
    'discount = EXCLUDED.discount, started_at = COALESCE(EXCLUDED.started_at, s.started_at), updated_at = now()')


def write_db(cur, tenant, new_tenant, mirror, after):
    slug = tenant['slug']
    if new_tenant != tenant:
        cur.execute('UPDATE platform.tenants SET stripe_customer_id = %s, plan_code = %s, billing_cycle = %s, '
                    'trial_ends_at = %s, status = %s, updated_at = now() WHERE id = %s',
                    (new_tenant['stripe_customer_id'], new_tenant['plan_code'], new_tenant['billing_cycle'],
                     new_tenant['trial_ends_at'], new_tenant['status'], tenant['id']))
    if after is not None and public(slug, mirror) != public(slug, after):
        cur.execute(_UPSERT, (
            tenant['id'], after['stripe_customer_id'], after['stripe_subscription_id'], after['stripe_item_id'],
            after['stripe_price_id'], jsonb(after['metered_items'] or {}), after['plan'], after['billing_cycle'],
            after['currency'], after['status'], _ts(after['current_period_start']), _ts(after['current_period_end']),
            _ts(after['trial_end']), after['cancel_at_period_end'], _ts(after['canceled_at']),
            None if after['discount'] is None else jsonb(after['discount']), _ts(after.get('started_at'))))
        audit(cur, 'subscription', slug, 'create' if mirror is None else 'update', public(slug, mirror) or None,
              public(slug, after), tenant_id=tenant['id'])


# The run ----------------------------------------------------------------------

class SubscriptionRun(object):
    """One run of the module; ``actions`` lists the planned Stripe writes, also when the run fails."""

    def __init__(self, module, client):
        self.module, self.client = module, client
        self.conn = None
        self.p = module.params
        self.actions = []

    def find(self, tenant, mirror):
        """The tenant's customer and open subscription in Stripe, and the subscription the mirror holds when
        Stripe ended it in between (dunning cancels, an incomplete one expires)."""
        customer = find_customer(self.module, self.client, tenant)
        sub = find_subscription(self.module, self.client, customer, mirror) if customer else None
        ended = None
        if sub is None and customer and mirror and mirror['stripe_subscription_id'] and mirror['status'] not in ENDED:
            try:
                ended = self.client.get('/v1/subscriptions/%s' % mirror['stripe_subscription_id'])
            except StripeError as e:
                if e.status != 404:
                    raise
        return customer, sub, ended

    def run(self, conn):
        self.conn = conn
        p, module = self.p, self.module
        require_schema(module, self.conn, '0017', dict(changed=True, subscription={}, actions=[],
                                                       api_calls=self.client.counts()))
        check_params(p)
        cancel_now = p['state'] == 'absent' or p['cancel'] == 'immediately'
        cur = self.conn.cursor()
        tenant = read_tenant(cur, p['tenant'])
        if tenant is None:
            raise BillingError('tenant: unknown tenant %r' % p['tenant'])
        if not module.check_mode:
            # one run per tenant at a time; the row lock is held until the database write
            cur.execute('SELECT 1 FROM platform.tenants WHERE id = %s FOR UPDATE', (tenant['id'],))
        mirror = read_mirror(cur, tenant['id'])
        want = None
        if not cancel_now:
            if tenant['status'] == 'deleted':
                raise BillingError('tenant: %s is deleted; restore it before subscribing it' % p['tenant'])
            want = resolve(p, cur, tenant, mirror)
        customer, sub, ended = self.find(tenant, mirror)
        # the customer's tax IDs, when they are declared
        tax_ids = None
        if customer and p['tax_ids'] is not None:
            tax_ids = self.client.list('/v1/customers/%s/tax_ids' % customer['id'])
        if want is not None:
            check_subscription(p, sub, want)
            check_automatic_tax(p, self.client, customer)
            if p['promotion_code'] and applied_code(sub) != p['promotion_code']:
                want['promotion'] = find_promotion_code(self.client, p, customer, want, mirror, sub)
        writes = plan_writes(p, tenant, customer, sub, mirror, want, tax_ids)
        self.actions = [w['label'] for w in writes]

        customer_id = customer['id'] if customer else None
        metric_by_price = dict((pid, m) for m, pid in (want['metered'] if want else {}).items())
        if module.check_mode or not writes:
            after = predict(p, writes, customer_id, sub, ended, mirror, want, metric_by_price)
        else:
            customer_id, sub = apply_writes(self.client, p, tenant, writes, customer_id, sub)
            after = mirror if sub is None else mirror_of(sub, customer_id, want or dict(plan=None, cycle=None),
                                                         metric_by_price)
        new_tenant = tenant_after(p, tenant, after, cancel_now, module.check_mode)
        tenant_changed = any(_epoch(new_tenant[k]) != _epoch(tenant[k]) if k == 'trial_ends_at'
                             else new_tenant[k] != tenant[k] for k in tenant)
        before_public, after_public = public(p['tenant'], mirror), public(p['tenant'], after)
        changed = bool(writes) or before_public != after_public or tenant_changed
        if changed and not module.check_mode:
            write_db(cur, tenant, new_tenant if tenant_changed else tenant, mirror, after)
            self.conn.commit()
        self.conn.rollback()
        result = dict(changed=changed, subscription=after_public, actions=self.actions, api_calls=self.client.counts())
        if want is not None:
            result['tax'] = tax_view(p, customer, tax_ids, sub)
            if want['kept']:
                result['plan_kept'] = want['kept']
                module.warn('tenant %s keeps the plan its customer chose in Stripe (%s %s), not %s %s; give '
                            'plan_source operator to selfbase.platform.tenants to apply it'
                            % (p['tenant'], want['plan'], want['cycle'], want['kept']['wanted']['plan'],
                               want['kept']['wanted']['billing_cycle']))
        if module._diff:
            result['diff'] = dict(before=before_public, after=after_public)
            if want is not None and any(p[k] is not None for k in TAX_OPTIONS):
                result['diff']['before'] = dict(before_public, tax=tax_view(
                    dict(p, **dict.fromkeys(TAX_OPTIONS)),
                    customer, tax_ids, sub))
                result['diff']['after'] = dict(after_public, tax=result['tax'])
        return result
