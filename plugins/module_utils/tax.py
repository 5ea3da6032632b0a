# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tenant's tax details on its Stripe customer (billing address, tax exemption, tax IDs) and Stripe Tax on its
subscription, for selfbase.platform.tenant_subscription: checked before any write, then planned as writes."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re

from ansible_collections.selfbase.platform.plugins.module_utils.billing import BillingError
from ansible_collections.selfbase.platform.plugins.module_utils.stripe_api import sdk_values

ADDRESS_KEYS = ('line1', 'line2', 'city', 'state', 'postal_code', 'country')
# Where Stripe Tax needs a postal code to place a customer (a country alone places the others)
POSTAL_CODE = {'US': r'\d{5}(-\d{4})?', 'CA': r'[A-Za-z]\d[A-Za-z] ?\d[A-Za-z]\d'}
_EU = 'AT|BE|BG|CY|CZ|DE|DK|EE|EL|ES|FI|FR|HR|HU|IE|IT|LT|LU|LV|MT|NL|PL|PT|RO|SE|SI|SK|XI'
# The formats Stripe checks for the common types (its examples: DE123456789, GB123456789, 12-3456789,
# 12345678912, 123456789); any other type of the pinned API version is passed on as given
TAX_ID_FORMAT = {'eu_vat': r'(%s)[0-9A-Z+*]{2,13}' % _EU, 'gb_vat': r'GB(\d{9}|\d{12})', 'us_ein': r'\d{2}-\d{7}',
                 'au_abn': r'\d{11}', 'ca_bn': r'\d{9}'}


def tax_id_types():
    """The tax ID types of the pinned API version, or None."""
    return sdk_values('CustomerCreateTaxIdParams', 'type')


def located(address):
    """Whether Stripe Tax can place a customer at ``address``."""
    address = address or {}
    country = address.get('country') or ''
    pattern = POSTAL_CODE.get(country)
    return bool(re.fullmatch('[A-Z]{2}', country)) and (
        pattern is None or bool(re.fullmatch(pattern, address.get('postal_code') or '')))


def check_tax_params(p):
    """Refuse tax details Stripe would refuse, naming the field, before anything is written."""
    address = p['billing_address']
    if address is not None:
        country = address.get('country') or ''
        if not re.fullmatch('[A-Z]{2}', country):
            raise BillingError('billing_address.country: must be a two-letter ISO 3166-1 code in capitals, such as '
                               'US or DE (Stripe Tax places customers by it); got %r' % country)
        pattern = POSTAL_CODE.get(country)
        if pattern and not re.fullmatch(pattern, address.get('postal_code') or ''):
            raise BillingError('billing_address.postal_code: a customer in %s needs a valid postal code for Stripe '
                               'Tax to place it; got %r' % (country, address.get('postal_code')))
    types, seen = tax_id_types(), set()
    for i, tax_id in enumerate(p['tax_ids'] or []):
        name = 'tax_ids[%d]' % i
        if types is not None and tax_id['type'] not in types:
            raise BillingError('%s.type: Stripe has no tax ID type %r' % (name, tax_id['type']))
        pattern = TAX_ID_FORMAT.get(tax_id['type'], r'\S.*')
        if not re.fullmatch(pattern, tax_id['value'] or ''):
            raise BillingError('%s.value: %r is not a valid %s' % (name, tax_id['value'], tax_id['type']))
        if (tax_id['type'], tax_id['value']) in seen:
            raise BillingError('%s: %s %s is listed twice' % (name, tax_id['type'], tax_id['value']))
        seen.add((tax_id['type'], tax_id['value']))


def check_automatic_tax(p, client, customer):
    """With automatic_tax, Stripe Tax must be active on the account and the customer placed by its address."""
    if not p['automatic_tax']:
        return
    settings = client.get('/v1/tax/settings')
    if settings.get('status') != 'active':
        missing = ((settings.get('status_details') or {}).get('pending') or {}).get('missing_fields') or []
        raise BillingError('automatic_tax: Stripe Tax is not active on this Stripe account (missing: %s); set its '
                           'head office address and registrations in Stripe first (docs/billing.md, "Tax")'
                           % (', '.join(missing) or 'unknown'))
    address = p['billing_address'] if p['billing_address'] is not None else (customer or {}).get('address')
    if not located(address):
        raise BillingError('billing_address: tenant %s has no address Stripe Tax can place (a country, and a postal '
                           'code in the US and Canada), which automatic_tax needs' % p['tenant'])


def _address(address):
    return dict((k, (address or {}).get(k) or None) for k in ADDRESS_KEYS)


def customer_tax_params(p, customer):
    """The customer's tax fields that differ from what p declares (all of them for a new customer)."""
    params = {}
    if p['billing_address'] is not None:
        want = _address(p['billing_address'])
        if customer is None:
            params['address'] = dict((k, v) for k, v in want.items() if v)
        elif want != _address(customer.get('address')):
            params['address'] = dict((k, v or '') for k, v in want.items())  # '' clears a line
        if params and p['automatic_tax']:
            params['tax'] = {'validate_location': 'immediately'}  # Stripe refuses an address it cannot place
    if p['tax_exempt'] is not None and (customer or {}).get('tax_exempt', 'none') != p['tax_exempt']:
        params['tax_exempt'] = p['tax_exempt']
    if customer is None and p['tax_ids']:
        params['tax_id_data'] = [dict(type=t['type'], value=t['value']) for t in p['tax_ids']]
    return params


def tax_id_writes(p, customer, have):
    """Create the declared tax IDs the customer lacks, delete the ones not declared (``have``: its tax IDs)."""
    if p['tax_ids'] is None or customer is None:
        return []
    want = [(t['type'], t['value']) for t in p['tax_ids']]
    held = dict(((t['type'], t['value']), t['id']) for t in have)
    # in the key: what the customer held, so a tax ID removed and added again is created again
    writes = [dict(what='tax_id', label='add tax ID %s %s' % key, params=dict(type=key[0], value=key[1]),
                   before=sorted(held.values())) for key in want if key not in held]
    writes.extend(dict(what='tax_id_delete', label='remove tax ID %s %s' % key, id=tid)
                  for key, tid in sorted(held.items()) if key not in want)
    return writes


def tax_view(p, customer, have, sub):
    """The tenant's tax details as Stripe holds them (or will, after the writes)."""
    address = _address(p['billing_address'] if p['billing_address'] is not None else (customer or {}).get('address'))
    ids = p['tax_ids'] if p['tax_ids'] is not None else have  # None: not declared, so not read
    enabled = p['automatic_tax'] if p['automatic_tax'] is not None else bool(
        ((sub or {}).get('automatic_tax') or {}).get('enabled'))
    return dict(automatic_tax=enabled, billing_address=address if any(address.values()) else None,
                tax_exempt=p['tax_exempt'] or (customer or {}).get('tax_exempt') or 'none',
                tax_ids=None if ids is None else sorted(
                    [dict(type=t['type'], value=t['value']) for t in ids], key=lambda t: (t['type'], t['value'])))
