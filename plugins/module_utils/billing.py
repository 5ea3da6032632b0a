# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Billing input as operators write it, validated and normalised before any
write: currencies and their exponents, amounts in minor units, lookup keys,
and plan definitions (billing_plan) checked against the platform catalog."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re
from decimal import Decimal, InvalidOperation

from ansible.module_utils.common.validation import check_type_bool, check_type_int
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError
from ansible_collections.selfbase.platform.plugins.module_utils.quotas import (
    QuotaError, parse_price, quota_entry)

# Stripe's presentment currencies (ISO 4217, lower case).
CURRENCIES = frozenset((
    'aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl bsd bwp byn bzd cad cdf '
    'chf clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp gel gip gmd gnf gtq gyd hkd hnl htg '
    'huf idr ils inr isk jmd jod jpy kes kgs khr kmf krw kwd kyd kzt lak lbp lkr lrd lsl mad mdl mga mkd mmk '
    'mnt mop mur mvr mwk mxn myr mzn nad ngn nio nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub '
    'rwf sar sbd scr sek sgd shp sle sos srd std szl thb tjs tnd top try ttd twd tzs uah ugx usd uyu uzs vnd '
    'vuv wst xaf xcd xof xpf yer zar zmw').split())
# Stripe's zero-decimal currencies: an amount of 500 jpy is 500 yen.
ZERO_DECIMAL = frozenset('bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf'.split())
# Three-decimal currencies: amounts in thousandths, the last digit must be 0.
THREE_DECIMAL = frozenset('bhd jod kwd omr tnd'.split())
# Two-decimal in the API, but only whole units can be charged (Stripe's special cases).
WHOLE_UNITS_ONLY = frozenset(('isk',))
INTERVALS = ('month', 'year')
CODE_RE = re.compile(r'[a-z0-9][a-z0-9_-]{0,62}')
# a plan feature: a name that is on or off, or a name with a level; together one Stripe lookup key (80 at most)
FEATURE_RE = re.compile(r'[a-z][a-z0-9_]{0,39}')
FEATURE_LEVEL_RE = re.compile(r'[a-z0-9][a-z0-9_-]{0,38}')
MAX_UNIT_AMOUNT = 99999999          # Stripe's eight-digit limit
MAX_DECIMAL_PLACES = 12             # of unit_amount_decimal, in minor units
PRORATION_BEHAVIORS = ('create_prorations', 'none', 'always_invoice')


class BillingError(InputError):
    """Invalid input; the message names the field and the rule."""


def check_currency(value, field):
    """A currency code as Stripe wants it (lower case); fails for codes Stripe does not support."""
    if not isinstance(value, str) or not value.strip():
        raise BillingError('%s: required, a three-letter ISO 4217 code such as usd, eur or jpy' % field)
    code = value.strip().lower()
    if code not in CURRENCIES:
        raise BillingError('%s: unknown currency %r; use a three-letter ISO 4217 code that Stripe supports, '
                           'such as usd, eur or jpy' % (field, value))
    return code


def exponent(currency):
    """Decimal places of a currency's minor unit in Stripe amounts."""
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def _decimal(value, field):
    if isinstance(value, bool) or value is None or value == '':
        raise BillingError('%s: must be a number; got %r' % (field, value))
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise BillingError('%s: must be a number; got %r' % (field, value))
    if not number.is_finite():
        raise BillingError('%s: must be a finite number; got %r' % (field, value))
    if number < 0:
        raise BillingError('%s: must not be negative; got %r' % (field, value))
    return number


def _places(number):
    return max(0, -number.normalize().as_tuple().exponent)


def to_minor_units(currency, amount=None, amount_decimal=None, field='amount'):
    """The amount in the currency's minor unit (what Stripe's unit_amount takes).

    Give either amount (already in minor units) or amount_decimal (in major units, with at most
    the currency's number of decimal places). field is the prefix of both in messages."""
    prefix = field.rsplit('.', 1)[0] + '.' if '.' in field else ''
    if (amount is None) == (amount_decimal is None):
        raise BillingError('%samount: give exactly one of amount (in minor units) or amount_decimal' % prefix)
    places = exponent(currency)
    if amount is not None:
        if isinstance(amount, bool) or not isinstance(amount, int):
            try:
                amount = _decimal(amount, prefix + 'amount')
            except BillingError:
                raise BillingError('%samount: must be a whole number of minor units (cents); got %r' % (prefix, amount))
            if amount != amount.to_integral_value():
                raise BillingError('%samount: must be a whole number of minor units (cents); got %r; use amount_decimal '
                                   'for an amount in %s' % (prefix, str(amount), currency.upper()))
            amount = int(amount)
        if amount < 0:
            raise BillingError('%samount: must not be negative; got %d' % (prefix, amount))
        minor = amount
        where = prefix + 'amount'
    else:
        where = prefix + 'amount_decimal'
        number = _decimal(amount_decimal, where)
        if _places(number) > places:
            if places == 0:
                raise BillingError('%s: %s is a zero-decimal currency, so the amount must be whole; got %s'
                                   % (where, currency, amount_decimal))
            raise BillingError('%s: %s has %d decimal places; got %s' % (where, currency, places, amount_decimal))
        minor = int(number.scaleb(places))
    if currency in THREE_DECIMAL and minor % 10:
        raise BillingError('%s: %s amounts must be rounded to 0.010 (Stripe wants the last digit of the minor '
                           'unit to be 0); got %d' % (where, currency, minor))
    if currency in WHOLE_UNITS_ONLY and minor % 100:
        raise BillingError('%s: %s amounts must be whole units (minor units divisible by 100); got %d'
                           % (where, currency, minor))
    if minor > MAX_UNIT_AMOUNT:
        raise BillingError('%s: at most %d minor units (eight digits); got %d' % (where, MAX_UNIT_AMOUNT, minor))
    return minor


def unit_amount_decimal(currency, price, field):
    """A per-unit (overage) price in major units as Stripe's unit_amount_decimal: minor units, as a string."""
    number = _decimal(price, field)
    minor = number.scaleb(exponent(currency)).normalize()
    if _places(minor) > MAX_DECIMAL_PLACES:
        raise BillingError('%s: %s is more precise than Stripe allows (%d decimal places of a minor unit of %s)'
                           % (field, price, MAX_DECIMAL_PLACES, currency))
    return format(minor, 'f')


def lookup_key(plan, interval, currency):
    """The stable lookup_key of a plan's price: pro_month_usd.

    Unambiguous: interval and currency are fixed-format suffixes."""
    return '%s_%s_%s' % (plan, interval, currency)


def overage_lookup_key(plan, interval, currency, metric):
    """Lookup key of a metered overage price: pro_month_usd.api_requests (plan codes and metrics have no dot)."""
    return '%s.%s' % (lookup_key(plan, interval, currency), metric)


# Plans ------------------------------------------------------------------------

PRICE_OPTIONS = dict(
    interval=dict(type='str', required=True, choices=list(INTERVALS)),
    currency=dict(type='str', required=True),
    amount=dict(type='raw'),
    amount_decimal=dict(type='raw'),
)
QUOTA_OPTIONS = dict(
    metric=dict(type='str', required=True),
    limit=dict(type='raw'),
    period=dict(type='str', default='month'),
    mode=dict(type='str', default='hard'),
    overage_unit_price=dict(type='raw'),
)
PLAN_KEYS = ('code', 'name', 'description', 'features', 'active', 'trial_days', 'prices', 'quotas', 'state')


def plan_options(code_required=True):
    """Options of one plan: the billing_plan module's own, and the suboptions of a plans[] entry."""
    return dict(
        code=dict(type='str', required=code_required),
        name=dict(type='str'),
        description=dict(type='str'),
        features=dict(type='dict'),
        active=dict(type='bool', default=True),
        trial_days=dict(type='int'),
        prices=dict(type='list', elements='dict', options=PRICE_OPTIONS),
        quotas=dict(type='list', elements='dict', options=QUOTA_OPTIONS),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )


def _check_item(item, where, options):
    if not isinstance(item, dict):
        raise BillingError('%s: must be a dict with %s' % (where, ', '.join(options)))
    unknown = sorted(set(item) - set(options))
    if unknown:
        raise BillingError('%s: unsupported key(s) %s; use %s' % (where, ', '.join(unknown), ', '.join(options)))


def _normalise_prices(value, field):
    prices = {}
    for i, item in enumerate(value or ()):
        where = '%s[%d]' % (field, i)
        _check_item(item, where, PRICE_OPTIONS)
        interval = item.get('interval')
        if interval not in INTERVALS:
            raise BillingError('%s.interval: must be one of month, year; got %r' % (where, interval))
        currency = check_currency(item.get('currency'), where + '.currency')
        amount = to_minor_units(currency, item.get('amount'), item.get('amount_decimal'), where + '.amount')
        if (interval, currency) in prices:
            raise BillingError('%s: the %s price in %s is listed twice' % (where, interval, currency))
        prices[(interval, currency)] = amount
    return prices


def _normalise_quotas(value, field, metrics, currencies):
    quotas = {}
    for i, item in enumerate(value or ()):
        where = '%s[%d]' % (field, i)
        _check_item(item, where, QUOTA_OPTIONS)
        try:
            metric, limit, period, mode = quota_entry(item, where, metrics, quotas)
        except QuotaError as e:
            raise BillingError(str(e))
        price = item.get('overage_unit_price')
        overage = {}
        if mode == 'overage':
            if price is None:
                raise BillingError('%s.overage_unit_price: required with mode overage' % where)
            if not currencies:
                raise BillingError('%s.mode: an overage quota needs the plan\'s prices in the same task (the overage '
                                   'prices get their intervals and currencies)' % where)
            if isinstance(price, dict):
                given = dict((check_currency(c, '%s.overage_unit_price.%s' % (where, c)), v) for c, v in price.items())
                missing = sorted(set(currencies) - set(given))
                extra = sorted(set(given) - set(currencies))
                if missing or extra:
                    raise BillingError('%s.overage_unit_price: give a price for each currency of the plan (%s)%s'
                                       % (where, ', '.join(sorted(currencies)),
                                          '; %s is not one' % ', '.join(extra) if extra else ''))
            else:
                given = dict((c, price) for c in currencies)
            for currency in sorted(given):
                overage[currency] = unit_amount_decimal(currency, given[currency],
                                                        '%s.overage_unit_price' % where
                                                        + ('.' + currency if isinstance(price, dict) else ''))
            # the database keeps one number: the price in the first currency of the plan
            try:
                db_price = parse_price(given[currencies[0]], where + '.overage_unit_price')
            except QuotaError as e:
                raise BillingError(str(e))
        elif price is not None:
            raise BillingError('%s.overage_unit_price: only valid with mode overage; got mode %s' % (where, mode))
        else:
            db_price = None
        quotas[metric] = dict(limit=limit, period=period, mode=mode, overage_price=db_price, overage=overage)
    return quotas


def normalise_plan(entry, prefix, metrics):
    """Validate one plan (module params or a plans[] entry); metrics maps metric name -> unit."""
    code = entry.get('code')
    if not isinstance(code, str) or not CODE_RE.fullmatch(code):
        raise BillingError('%scode: %r is not a valid plan code: 1 to 63 lower-case letters, digits, _ and -, '
                           'starting with a letter or digit' % (prefix, code))
    state = entry.get('state') or 'present'
    if state not in ('present', 'absent'):
        raise BillingError('%sstate: must be present or absent; got %r' % (prefix, state))
    spec = dict(prefix=prefix, code=code, state=state)
    name = entry.get('name')
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise BillingError('%sname: must be a non-empty string' % prefix)
    spec['name'] = name
    spec['description'] = entry.get('description')
    features = entry.get('features')
    if features is not None:
        check_features(features, prefix + 'features')
    spec['features'] = features
    # plans[] entries are not converted by AnsibleModule: templated values arrive as strings
    try:
        spec['active'] = True if entry.get('active') is None else check_type_bool(entry['active'])
    except TypeError:
        raise BillingError('%sactive: must be a boolean; got %r' % (prefix, entry['active']))
    days = entry.get('trial_days')
    if isinstance(days, str):
        try:
            days = check_type_int(days)
        except TypeError:
            pass
    if days is not None and (isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= 730):
        raise BillingError('%strial_days: must be a whole number of days from 0 to 730 (Stripe\'s limit); got %r'
                           % (prefix, days))
    spec['trial_days'] = days
    spec['prices'] = None if entry.get('prices') is None else _normalise_prices(entry['prices'], prefix + 'prices')
    currencies = []
    for (_interval, currency) in spec['prices'] or ():
        if currency not in currencies:
            currencies.append(currency)
    spec['quotas'] = None if entry.get('quotas') is None else _normalise_quotas(
        entry['quotas'], prefix + 'quotas', metrics, currencies)
    return spec


def check_features(features, field):
    """A plan's features: each a name that is on (true) or off (false), or a name with a level (a string)."""
    if not isinstance(features, dict):
        raise BillingError('%s: must be a dict of feature names to true, false or a level' % field)
    for name, value in features.items():
        if not isinstance(name, str) or not FEATURE_RE.fullmatch(name):
            raise BillingError('%s: %r is not a feature name: 1 to 40 lower-case letters, digits and _, starting '
                               'with a letter' % (field, name))
        if not isinstance(value, bool) and not (isinstance(value, str) and FEATURE_LEVEL_RE.fullmatch(value)):
            raise BillingError('%s.%s: must be true, false or a level (1 to 39 lower-case letters, digits, _ and -); '
                               'got %r (limits are quotas)' % (field, name, value))


def feature_lookup_keys(features):
    """The Stripe Entitlements lookup keys of a plan's features: the name of a feature that is on, and
    name.level for a level; a feature that is off has none."""
    return sorted(name if value is True else '%s.%s' % (name, value)
                  for name, value in features.items() if value is not False)


def check_unique_codes(specs):
    seen = {}
    for spec in specs:
        first = seen.setdefault(spec['code'], spec)
        if first is not spec:
            raise BillingError('%scode: plan %s is listed twice (also %scode)'
                               % (spec['prefix'], spec['code'], first['prefix']))


def plan_products(client):
    """plan code -> product id (the active product when there are several), from the products' metadata.plan_code
    that billing_plan sets."""
    product_of = {}
    for product in client.list('/v1/products'):
        code = (product.get('metadata') or {}).get('plan_code')
        if code and (code not in product_of or product.get('active')):
            product_of[code] = product['id']
    return product_of


def find_by_key(module, client, path, meta_key, key, what):
    """The newest object of a list endpoint whose metadata[meta_key] is key (a warning names the others), or None."""
    mine = [o for o in client.list(path) if (o.get('metadata') or {}).get(meta_key) == key]
    if len(mine) > 1:
        module.warn('Stripe has %d %s with metadata.%s=%s; managing the newest, %s'
                    % (len(mine), what, meta_key, key, max(mine, key=lambda o: o['created'])['id']))
    return max(mine, key=lambda o: o['created']) if mine else None
