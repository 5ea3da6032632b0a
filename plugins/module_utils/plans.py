# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Billing plans as declarative state (the selfbase.platform.billing_plan module): the Stripe read cache, the
planning of product and price writes, the writes themselves, and the database read and write."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import uuid
from decimal import Decimal

from ansible_collections.selfbase.platform.plugins.module_utils.billing import (
    BillingError, PLAN_KEYS, check_unique_codes, feature_lookup_keys, lookup_key, normalise_plan, overage_lookup_key)
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import (
    audit, control_lock, json_safe, jsonb, require_schema)
from ansible_collections.selfbase.platform.plugins.module_utils.quotas import decimal_text
from ansible_collections.selfbase.platform.plugins.module_utils.stripe_api import StripeError, idempotency_key

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
            unit_amount_decimal=decimal_text(r['unit_amount_decimal']), lookup_key=r['lookup_key'],
            stripe_price_id=r['stripe_price_id'], active=r['active'])
    return plans


class StripeState(object):
    """What the run needs from Stripe, read in as few list requests as possible."""

    def __init__(self, client):
        self.client = client
        self.products = {}      # plan_code -> product
        self.prices = {}        # lookup_key -> active price
        self.by_id = None       # price id -> active price, when every active price was listed
        self.meters = {}        # event_name -> active meter
        self.features = {}      # lookup_key -> active Entitlements feature (None: created in this run)

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

    def read_features(self):
        for feature in self.client.list('/v1/entitlements/features', {'limit': 100}):
            self.features[feature['lookup_key']] = feature

    def product_features(self, product_id):
        """lookup_key -> product feature id, for each feature attached to a product."""
        return dict((pf['entitlement_feature']['lookup_key'], pf['id'])
                    for pf in self.client.list('/v1/products/%s/features' % product_id, {'limit': 100}))

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
        self.features = None    # (lookup keys attached before, or None for a new product; those wanted)


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


def _plan_features(plan, stripe, wanted):
    """Attach the plan's features to its product as Stripe Entitlements features (each created once in the
    account when missing), and detach the features it no longer has."""
    attached = stripe.product_features(plan.product_id) if plan.product_id else {}
    plan.features = (sorted(attached) if plan.product_id else None, wanted)
    where = plan.product_id or plan.code
    for key in wanted:
        if key in attached:
            continue
        if key not in stripe.features:
            stripe.features[key] = None
            plan.writes.append(dict(what='feature', label='create entitlement feature %s' % key, key=key))
        plan.writes.append(dict(what='attach_feature', label='attach feature %s to product %s' % (key, where),
                                key=key))
    for key, product_feature in sorted(attached.items()):
        if key not in wanted:
            plan.writes.append(dict(what='detach_feature', label='detach feature %s from product %s' % (key, where),
                                    id=product_feature))


def _feature_name(key):
    """custom_domains -> Custom domains; support.priority -> Support: priority (a name for the Dashboard)."""
    name, _dot, level = key.partition('.')
    name = name.replace('_', ' ').capitalize()
    return '%s: %s' % (name, level) if level else name


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

    if spec['features'] is not None:
        _plan_features(plan, stripe, feature_lookup_keys(spec['features']))
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
            overage_unit_price=decimal_text(q['overage_price']), stripe_meter_id=q['stripe_meter_id'],
            overage_prices=[dict(interval=i, currency=c, **v) for (i, c), v in sorted(q['overage'].items())]))
    if 'stripe_features' in state:
        out['stripe_features'] = state['stripe_features']
    return json_safe(out)


# Writing ---------------------------------------------------------------------

def run_stripe(client, plan, stripe, nonce):
    """Make the plan's Stripe writes; fills in the ids of created objects in plan.after. A feature's lookup key
    is unique among active features and a feature is attached to a product once, so their keys are the run's
    own (``nonce``): a re-run finds them, where a key of the wanted state would replay an attach from before a
    detach."""
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
        elif w['what'] == 'feature':
            stripe.features[w['key']] = client.post('/v1/entitlements/features', {
                'lookup_key': w['key'], 'name': _feature_name(w['key'])}, key=idempotency_key('feature', w['key'], nonce))
        elif w['what'] == 'attach_feature':
            feature = stripe.features[w['key']]['id']
            client.post('/v1/products/%s/features' % plan.product_id, {'entitlement_feature': feature},
                        key=idempotency_key('attach feature', plan.product_id, feature, nonce))
        elif w['what'] == 'detach_feature':
            try:
                client.delete('/v1/products/%s/features/%s' % (plan.product_id, w['id']))
            except StripeError as e:
                if e.status != 404:  # gone already (a retry of a delete whose answer was lost): done
                    raise
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


# The run ----------------------------------------------------------------------

def entries_of(module):
    """(field prefix, entry) for each plan the task names: O(plans), or the one plan of the top-level options."""
    p = module.params
    if p['plans'] is None:
        return [('', dict((k, p[k]) for k in PLAN_KEYS))]
    entries = []
    for i, entry in enumerate(p['plans']):
        unknown = sorted(set(entry) - set(PLAN_KEYS))
        if unknown:
            raise BillingError('plans[%d]: unsupported option(s) %s; supported: %s'
                               % (i, ', '.join(unknown), ', '.join(PLAN_KEYS)))
        entries.append(('plans[%d].' % i, entry))
    return entries


def price_keys(specs, db):
    """Every lookup key the run may touch: the wanted ones, and those the database holds."""
    keys = []
    for spec in specs:
        if spec['state'] != 'present':
            continue
        for (interval, currency) in spec['prices'] or ():
            keys.append(lookup_key(spec['code'], interval, currency))
            keys.extend(overage_lookup_key(spec['code'], interval, currency, metric)
                        for metric, q in (spec['quotas'] or {}).items() if q['overage'])
        old = db.get(spec['code'])
        for entry in (old['prices'].values() if old else ()):
            keys.append(entry['lookup_key'])
        for q in (old['quotas'].values() if old else ()):
            keys.extend(e['lookup_key'] for e in q['overage'].values())
    return [k for k in keys if k]


def read_stripe(module, client, specs, db):
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
    stripe.read_prices(price_keys(specs, db))
    if any(s['state'] == 'present' and s['features'] is not None for s in specs):
        stripe.read_features()
    return stripe


def plan_all(specs, db, stripe):
    """One Plan per spec, with its writes and the database state after them."""
    plans = []
    for spec in specs:
        plan = Plan(spec, db.get(spec['code']), stripe.products.get(spec['code']))
        plan.after = plan_present(plan, stripe) if spec['state'] == 'present' else plan_absent(plan, stripe)
        _prices_on_an_active_product(plan)
        plan.before = public(plan.db)
        _stripe_features(plan)
        plan.changed = bool(plan.writes) or plan.before != public(plan.after)
        plans.append(plan)
    return plans


def _stripe_features(plan):
    """The features attached in Stripe, beside the database's state, where the run declares them."""
    if plan.features is None:
        return
    if plan.before and plan.features[0] is not None:
        plan.before['stripe_features'] = plan.features[0]
    plan.after['stripe_features'] = plan.features[1]


def run(module, conn, client):
    """Plan every named plan, and apply the plan unless in check mode; returns the module's result."""
    require_schema(module, conn, '0003', dict(changed=True, plans=[], actions=[], api_calls=client.counts()))
    cur = conn.cursor()
    if not module.check_mode:
        control_lock(cur, LOCK_KEY)
    metrics = dict((r['name'], r['unit']) for r in cur.execute('SELECT name, unit FROM platform.metrics'))
    specs = [normalise_plan(entry, prefix, metrics) for prefix, entry in entries_of(module)]
    check_unique_codes(specs)
    db = read_db(cur, [s['code'] for s in specs])
    stripe = read_stripe(module, client, specs, db)
    plans = plan_all(specs, db, stripe)
    changed = any(plan.changed for plan in plans)
    if changed and not module.check_mode:
        nonce = uuid.uuid4().hex
        for plan in plans:
            run_stripe(client, plan, stripe, nonce)
        for plan in plans:
            if plan.after is not None and public(plan.after) != plan.before:
                write_db(cur, plan, plan.before)
        conn.commit()
        db = read_db(cur, [s['code'] for s in specs])
        for plan in plans:
            plan.after = db.get(plan.code)
            if plan.after is not None and plan.features is not None:
                plan.after['stripe_features'] = plan.features[1]
    conn.rollback()
    results = [public(plan.after) for plan in plans]
    result = dict(changed=changed, plans=results, actions=[w['label'] for plan in plans for w in plan.writes],
                  api_calls=client.counts())
    if module._diff:
        changes = [(plan.before, after) for plan, after in zip(plans, results) if plan.changed]
        if len(plans) > 1:
            result['diff'] = dict(before=[c[0] for c in changes], after=[c[1] for c in changes])
        else:
            result['diff'] = dict(before=changes[0][0] if changes else results[0], after=results[0])
    return result
