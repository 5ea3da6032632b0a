# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Stripe coupon and its promotion codes as declarative state (the selfbase.platform.billing_coupon module).

Stripe cannot change a coupon's discount, duration or limits, nor a promotion code's restrictions, expiry or
limit. A change to one of those makes a new coupon (the old one is deleted; subscriptions that already have its
discount keep it) or a new promotion code with the same code (the old one is deactivated first, since a code is
unique among active codes)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import re

from ansible_collections.selfbase.platform.plugins.module_utils.billing import (
    BillingError, check_currency, find_by_key, plan_products, to_minor_units)

KEY_META = 'selfbase_coupon'
KEY_RE = re.compile(r'^[a-z0-9][a-z0-9_-]{0,62}$')
CODE_RE = re.compile(r'^[A-Za-z0-9]{1,500}$')
NAME_MAX = 40
# What Stripe cannot change on a coupon, and on a promotion code
COUPON_TERMS = ('percent_off', 'amount_off', 'currency', 'duration', 'duration_in_months', 'max_redemptions',
                'redeem_by', 'plans')
CODE_TERMS = ('expires_at', 'max_redemptions', 'first_time_transaction', 'minimum_amount',
              'minimum_amount_currency')


def _epoch(value, field):
    """An ISO 8601 date or date-time (UTC when no zone is given) as seconds since the epoch, or None."""
    if value is None:
        return None
    try:
        when = datetime.datetime.fromisoformat(str(value).replace('Z', '+00:00'))
    except ValueError:
        raise BillingError('%s: must be an ISO 8601 date or date-time such as 2027-01-31 or 2027-01-31T12:00:00Z; '
                           'got %r' % (field, value))
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp())


def _iso(epoch):
    return None if epoch is None else datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).isoformat()


def _positive(value, field):
    if value is not None and value <= 0:
        raise BillingError('%s: must be greater than 0; got %r' % (field, value))
    return value


def _minor(currency, amount, field):
    _positive(amount, field)
    return to_minor_units(currency, amount=amount, field=field)


def desired(p, now):
    """The coupon and codes that p asks for, validated before any call; raises BillingError naming the field."""
    if not KEY_RE.match(p['key']):
        raise BillingError('key: %r must be 1 to 63 lower-case letters, digits, _ or -, starting with a letter or '
                           'digit' % p['key'])
    if p['state'] == 'absent':
        return None
    if p['name'] is not None and not 0 < len(p['name']) <= NAME_MAX:
        raise BillingError('name: must be 1 to %d characters (Stripe shows it on invoices)' % NAME_MAX)
    if (p['percent_off'] is None) == (p['amount_off'] is None):
        raise BillingError('percent_off: give exactly one of percent_off or amount_off')
    if p['percent_off'] is not None and not 0 < p['percent_off'] <= 100:
        raise BillingError('percent_off: must be greater than 0 and at most 100; got %r' % p['percent_off'])
    currency, options = None, {}
    if p['amount_off'] is not None:
        if p['currency'] is None:
            raise BillingError('currency: required with amount_off')
        currency = check_currency(p['currency'], 'currency')
        _minor(currency, p['amount_off'], 'amount_off')
        for cur, amount in sorted((p['currency_options'] or {}).items()):
            code = check_currency(cur, 'currency_options')
            if code == currency:
                raise BillingError('currency_options: %s is the coupon\'s own currency; set amount_off' % code)
            options[code] = _minor(code, amount, 'currency_options.%s' % code)
    elif p['currency'] is not None or p['currency_options']:
        raise BillingError('currency: only with amount_off (a percent_off coupon applies in every currency)')
    if (p['duration'] == 'repeating') != (p['duration_in_months'] is not None):
        raise BillingError('duration_in_months: required with duration=repeating, and only with it')
    _positive(p['duration_in_months'], 'duration_in_months')
    redeem_by = _epoch(p['redeem_by'], 'redeem_by')
    coupon = dict(
        key=p['key'], name=p['name'], percent_off=p['percent_off'] and float(p['percent_off']),
        amount_off=p['amount_off'], currency=currency, currency_options=options, duration=p['duration'],
        duration_in_months=p['duration_in_months'], max_redemptions=_positive(p['max_redemptions'], 'max_redemptions'),
        redeem_by=redeem_by, plans=sorted(set(p['plans'] or [])), metadata=dict(p['metadata'] or {}))
    codes = None if p['promotion_codes'] is None else [
        desired_code(c, i, redeem_by, now) for i, c in enumerate(p['promotion_codes'])]
    if codes is not None:
        seen = set()
        for i, c in enumerate(codes):
            if c['code'].lower() in seen:
                raise BillingError('promotion_codes[%d].code: %s is listed twice (codes are compared regardless of '
                                   'case)' % (i, c['code']))
            seen.add(c['code'].lower())
    return dict(coupon=coupon, codes=codes)


def desired_code(c, i, redeem_by, now):
    field = 'promotion_codes[%d].' % i
    if not CODE_RE.match(c['code'] or ''):
        raise BillingError('%scode: %r must be 1 to 500 letters and digits' % (field, c['code']))
    expires = _epoch(c['expires_at'], field + 'expires_at')
    if expires is not None and redeem_by is not None and expires > redeem_by:
        raise BillingError('%sexpires_at: must not be after the coupon\'s redeem_by' % field)
    if c['active'] and expires is not None and expires <= now:
        raise BillingError('%sexpires_at: %s has passed, so the code cannot be active' % (field, _iso(expires)))
    if (c['minimum_amount'] is None) != (c['minimum_amount_currency'] is None):
        raise BillingError('%sminimum_amount_currency: give minimum_amount and minimum_amount_currency together'
                           % field)
    currency = c['minimum_amount_currency'] and check_currency(c['minimum_amount_currency'],
                                                               field + 'minimum_amount_currency')
    if currency:
        _minor(currency, c['minimum_amount'], field + 'minimum_amount')
    return dict(code=c['code'], active=c['active'], expires_at=expires,
                max_redemptions=_positive(c['max_redemptions'], field + 'max_redemptions'),
                first_time_transaction=c['first_time_transaction'], minimum_amount=c['minimum_amount'],
                minimum_amount_currency=currency, metadata=dict(c['metadata'] or {}))


# Views: Stripe objects in the shape this module compares and returns --------

def coupon_view(obj, plan_of):
    if not obj:
        return {}
    products = (obj.get('applies_to') or {}).get('products') or []
    meta = dict(obj.get('metadata') or {})
    return dict(
        id=obj['id'], key=meta.pop(KEY_META, None), name=obj.get('name'), percent_off=obj.get('percent_off'),
        amount_off=obj.get('amount_off'), currency=obj.get('currency'),
        currency_options=dict((c, o['amount_off']) for c, o in (obj.get('currency_options') or {}).items()),
        duration=obj['duration'], duration_in_months=obj.get('duration_in_months'),
        max_redemptions=obj.get('max_redemptions'), redeem_by=obj.get('redeem_by'),
        plans=sorted(plan_of.get(pid, pid) for pid in products), metadata=meta, valid=obj.get('valid', True),
        times_redeemed=obj.get('times_redeemed', 0))


def code_view(obj):
    r = obj.get('restrictions') or {}
    return dict(id=obj['id'], code=obj['code'], active=obj['active'], expires_at=obj.get('expires_at'),
                max_redemptions=obj.get('max_redemptions'),
                first_time_transaction=bool(r.get('first_time_transaction')),
                minimum_amount=r.get('minimum_amount'), minimum_amount_currency=r.get('minimum_amount_currency'),
                metadata=dict(obj.get('metadata') or {}), times_redeemed=obj.get('times_redeemed', 0))


def public_coupon(view):
    if not view:
        return {}
    return dict(view, redeem_by=_iso(view['redeem_by']))


def public_code(view):
    return dict(view, expires_at=_iso(view['expires_at']))


# Planning ------------------------------------------------------------------

def plan_coupon(want, have):
    """(after, writes) for the coupon: writes are ('create'|'update'|'delete', params)."""
    if want is None:
        return ({}, [('delete', None)]) if have else ({}, [])
    w = want['coupon']
    terms_differ = [k for k in COUPON_TERMS if have and have[k] != w[k]]
    removed = [c for c in (have or {}).get('currency_options', {}) if c not in w['currency_options']]
    changed_options = [c for c, a in w['currency_options'].items()
                       if have and c in have['currency_options'] and have['currency_options'][c] != a]
    meta = dict(w['metadata'])
    if not have or terms_differ or removed or changed_options:
        after = dict(w, id=None, valid=True, times_redeemed=0, name=w['name'], metadata=meta)
        writes = [('create', None)] + ([('delete', None)] if have else [])
        return after, writes
    after = dict(have, metadata=dict(have['metadata'], **meta))
    update = {}
    if w['name'] is not None and w['name'] != have['name']:
        after['name'] = update['name'] = w['name']
    added = dict((c, a) for c, a in w['currency_options'].items() if c not in have['currency_options'])
    if added:
        after['currency_options'] = dict(have['currency_options'], **added)
        update['currency_options'] = dict((c, dict(amount_off=a)) for c, a in added.items())
    if after['metadata'] != have['metadata']:
        update['metadata'] = meta
    return after, [('update', update)] if update else []


def _same_terms(code, want):
    return all(code[k] == want[k] for k in CODE_TERMS)


def plan_codes(want_codes, have_codes, new_coupon, now):
    """(after, writes) for the promotion codes of the coupon: writes are ('create', want), ('activate'|'deactivate',
    id), ('metadata', id, metadata). have_codes is every code of the current coupon; a new coupon starts with none,
    and without want_codes it gets the codes that are active now."""
    if want_codes is None:
        if not new_coupon:
            return ordered(have_codes), []
        want_codes = [dict((k, c[k]) for k in ('code', 'active', 'metadata') + CODE_TERMS)
                      for c in have_codes if c['active']]
    codes = [] if new_coupon else [dict(c) for c in have_codes]
    wanted = dict((w['code'].lower(), w) for w in want_codes)
    writes, created = [], []
    for c in codes:
        w = wanted.get(c['code'].lower())
        if c['active'] and (w is None or not _same_terms(c, w)):
            writes.append(('deactivate', c['id']))
            c['active'] = False
    for w in want_codes:
        match = next((c for c in codes if c['code'].lower() == w['code'].lower() and _same_terms(c, w)), None)
        if match is None:
            if w['active']:
                writes.append(('create', w))
                created.append(dict(w, id=None, times_redeemed=0))
            continue
        if match['active'] != w['active']:
            if w['active'] and not _redeemable(match, now):
                raise BillingError('promotion_codes: %s (%s) expired or reached its max_redemptions and cannot be '
                                   'reactivated; give it a new expires_at or max_redemptions'
                                   % (match['code'], match['id']))
            writes.append(('activate' if w['active'] else 'deactivate', match['id']))
            match['active'] = w['active']
        metadata = dict(match['metadata'], **w['metadata'])
        if metadata != match['metadata']:
            writes.append(('metadata', match['id'], w['metadata']))
            match['metadata'] = metadata
    # deactivations first: a code is unique among active codes
    writes.sort(key=lambda w: w[0] != 'deactivate')
    return ordered(codes + created), writes


def ordered(codes):
    return sorted(codes, key=lambda c: (c['code'].lower(), not c['active'], c['id'] or ''))


def _redeemable(code, now):
    return (code['expires_at'] is None or code['expires_at'] > now) and (
        code['max_redemptions'] is None or code['times_redeemed'] < code['max_redemptions'])


# Writing -------------------------------------------------------------------

def coupon_params(w, product_of):
    params = dict(duration=w['duration'], metadata=dict(w['metadata'], **{KEY_META: w['key']}))
    for k in ('name', 'percent_off', 'amount_off', 'currency', 'duration_in_months', 'max_redemptions', 'redeem_by'):
        if w[k] is not None:
            params[k] = w[k]
    if w['currency_options']:
        params['currency_options'] = dict((c, dict(amount_off=a)) for c, a in w['currency_options'].items())
    if w['plans']:
        params['applies_to'] = dict(products=[product_of[p] for p in w['plans']])
    return params


def code_params(w, coupon_id):
    params = dict(promotion=dict(type='coupon', coupon=coupon_id), code=w['code'])
    for k in ('expires_at', 'max_redemptions'):
        if w[k] is not None:
            params[k] = w[k]
    if w['metadata']:
        params['metadata'] = w['metadata']
    restrictions = dict((k, w[k]) for k in ('minimum_amount', 'minimum_amount_currency') if w[k] is not None)
    if w['first_time_transaction']:
        restrictions['first_time_transaction'] = True
    if restrictions:
        params['restrictions'] = restrictions
    return params


class CouponRun(object):
    """One run of billing_coupon; ``actions`` lists the planned Stripe writes, also when the run fails."""

    def __init__(self, module, client):
        self.module, self.client, self.p = module, client, module.params
        self.actions = []

    def products(self):
        """plan code -> product id, and back, from the products' metadata.plan_code."""
        product_of = plan_products(self.client)
        return product_of, dict((v, k) for k, v in product_of.items())

    def find(self):
        return find_by_key(self.module, self.client, '/v1/coupons', KEY_META, self.p['key'], 'coupons')

    def run(self):
        p, client = self.p, self.client
        now = int(datetime.datetime.now(datetime.timezone.utc).timestamp())
        want = desired(p, now)
        product_of, plan_of = ({}, {})
        if want is not None and want['coupon']['plans']:
            product_of, plan_of = self.products()
            missing = [c for c in want['coupon']['plans'] if c not in product_of]
            if missing:
                raise BillingError('plans: no Stripe product has metadata.plan_code %s; create the plan with '
                                   'selfbase.platform.billing_plan first' % ', '.join(missing))
        current = self.find()
        if current and (current.get('applies_to') or {}).get('products') and not plan_of:
            product_of, plan_of = self.products()
        have = coupon_view(current, plan_of)
        have_codes = ordered([code_view(c) for c in client.list('/v1/promotion_codes', {'coupon': current['id']})]) \
            if current else []
        after, coupon_writes = plan_coupon(want, have)
        new_coupon = any(w[0] == 'create' for w in coupon_writes)
        if want is None:
            codes_after, code_writes = [], []
        else:
            codes_after, code_writes = plan_codes(want['codes'], have_codes, new_coupon, now)
        self.actions = self.labels(coupon_writes, code_writes, have, codes_after)
        changed = bool(coupon_writes or code_writes)
        if changed and not self.module.check_mode:
            after, codes_after = self.apply(want, have, coupon_writes, code_writes, product_of, plan_of)
        before = dict(coupon=public_coupon(have), promotion_codes=[public_code(c) for c in have_codes])
        result = dict(changed=changed, coupon=public_coupon(after),
                      promotion_codes=[public_code(c) for c in codes_after],
                      replaced=have['id'] if have and new_coupon else None, actions=self.actions,
                      api_calls=client.counts())
        if self.module._diff:
            result['diff'] = dict(before=before, after=dict(coupon=result['coupon'],
                                                            promotion_codes=result['promotion_codes']))
        return result

    def labels(self, coupon_writes, code_writes, have, codes_after):
        by_id = dict((c['id'], c['code']) for c in codes_after if c.get('id'))
        out = []
        for kind, params in coupon_writes:
            if kind == 'create':
                out.append('create coupon %s%s' % (self.p['key'], ' to replace %s (its discount terms cannot change)'
                                                   % have['id'] if have else ''))
            elif kind == 'delete':
                out.append('delete coupon %s' % have['id'])
            else:
                out.append('update coupon %s (%s)' % (have['id'], ', '.join(sorted(params))))
        for w in code_writes:
            if w[0] == 'create':
                out.append('create promotion code %s' % w[1]['code'])
            else:
                out.append('%s promotion code %s (%s)' % (
                    'update the metadata of' if w[0] == 'metadata' else w[0], by_id.get(w[1]), w[1]))
        return out

    def apply(self, want, have, coupon_writes, code_writes, product_of, plan_of):
        client = self.client
        coupon = None
        for kind, params in coupon_writes:
            if kind == 'create':
                coupon = client.post('/v1/coupons', coupon_params(want['coupon'], product_of))
            elif kind == 'update':
                coupon = client.post('/v1/coupons/%s' % have['id'], params)
            else:
                client.delete('/v1/coupons/%s' % have['id'])
        coupon_id = coupon['id'] if coupon else have.get('id')
        for w in code_writes:
            if w[0] == 'create':
                client.post('/v1/promotion_codes', code_params(w[1], coupon_id))
            elif w[0] == 'metadata':
                client.post('/v1/promotion_codes/%s' % w[1], dict(metadata=w[2]))
            else:
                client.post('/v1/promotion_codes/%s' % w[1], dict(active=w[0] == 'activate'))
        if want is None:
            return {}, []
        coupon = coupon or client.get('/v1/coupons/%s' % coupon_id)
        codes = [code_view(c) for c in client.list('/v1/promotion_codes', {'coupon': coupon_id})]
        return coupon_view(coupon, plan_of), ordered(codes)
