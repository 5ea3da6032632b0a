# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Quota values as users write them (10GB, 1TiB, 100k, unlimited), normalised
to what platform.plan_quotas / platform.tenant_quotas store."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re
from decimal import Decimal, InvalidOperation

from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError

PERIODS = ('hour', 'day', 'month', 'none')
MODES = ('hard', 'soft', 'overage')

# SI for counts and bytes, IEC for bytes. Byte units are only valid on byte metrics.
_COUNT_UNITS = {'': 1, 'k': 10 ** 3, 'K': 10 ** 3, 'M': 10 ** 6, 'G': 10 ** 9, 'T': 10 ** 12}
_BYTE_UNITS = {'B': 1, 'kB': 10 ** 3, 'KB': 10 ** 3, 'MB': 10 ** 6, 'GB': 10 ** 9, 'TB': 10 ** 12, 'PB': 10 ** 15,
               'KiB': 2 ** 10, 'MiB': 2 ** 20, 'GiB': 2 ** 30, 'TiB': 2 ** 40, 'PiB': 2 ** 50}
_QUANTITY = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$')
UNLIMITED = ('unlimited', 'none', 'null', '')
# What the quota columns store: limit_value bigint, overage_unit_price numeric(20, 10).
MAX_LIMIT = 2 ** 63 - 1
MAX_PRICE = Decimal(10) ** 10           # exclusive
PRICE_QUANTUM = Decimal('1E-10')


class QuotaError(InputError):
    """Invalid input; the message names the field and the rule."""


def parse_limit(value, field, metric_unit='count'):
    """Return the limit as an int, or None for unlimited.

    metric_unit is the metric's unit from platform.metrics ('count', 'requests' or 'bytes').
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in UNLIMITED):
        return None
    if isinstance(value, bool):
        raise QuotaError('%s: must be a number such as 1000, 100k or 10GB, or "unlimited"; got %r' % (field, value))
    if isinstance(value, int):
        number, unit = Decimal(value), ''
    elif isinstance(value, float):
        number, unit = Decimal(repr(value)), ''
    else:
        match = _QUANTITY.match(str(value))
        if not match:
            if re.match(r'^\s*-', str(value)):
                raise QuotaError('%s: must not be negative; got %r' % (field, value))
            raise QuotaError('%s: must be a number such as 1000, 100k or 10GB, or "unlimited"; got %r'
                             % (field, value))
        try:
            number, unit = Decimal(match.group(1)), match.group(2)
        except InvalidOperation:
            raise QuotaError('%s: %r is not a number' % (field, value))
    if number < 0:
        raise QuotaError('%s: must not be negative; got %r' % (field, value))
    if unit in _BYTE_UNITS:
        if metric_unit != 'bytes':
            raise QuotaError('%s: byte unit %r used on a %s metric; use a plain number or k/M/G' % (field, unit, metric_unit))
        factor = _BYTE_UNITS[unit]
    elif unit in _COUNT_UNITS:
        factor = _COUNT_UNITS[unit]
    else:
        raise QuotaError('%s: unknown unit %r; use k, M, G, T, or for bytes B, KB, MB, GB, TB, KiB, MiB, GiB, TiB'
                         % (field, unit))
    result = number * factor
    if result != result.to_integral_value():
        raise QuotaError('%s: %r is not a whole number of units' % (field, value))
    if result > MAX_LIMIT:
        raise QuotaError('%s: %r is larger than the largest storable limit, %d' % (field, value, MAX_LIMIT))
    return int(result)


def parse_price(value, field):
    """Overage unit price as a Decimal (currency units per metric unit), or None."""
    if value is None or value == '':
        return None
    if isinstance(value, bool):
        raise QuotaError('%s: must be a non-negative number; got %r' % (field, value))
    try:
        price = Decimal(str(value))
    except InvalidOperation:
        raise QuotaError('%s: must be a non-negative number; got %r' % (field, value))
    if not price.is_finite() or price < 0:
        raise QuotaError('%s: must be a non-negative number; got %r' % (field, value))
    if price >= MAX_PRICE or price != price.quantize(PRICE_QUANTUM):
        raise QuotaError('%s: must be below %d with at most 10 decimal places; got %r' % (field, MAX_PRICE, value))
    return price


def decimal_text(value):
    """A number as plain decimal text without trailing zeros ('0.001', '12'), or None."""
    return None if value is None else format(Decimal(value).normalize(), 'f')


def quota_entry(item, where, metrics, seen):
    """metric, limit, period and mode of one quota entry of a list (a plan's or a tenant's); seen holds the
    metrics of the entries before it. Raises QuotaError naming the field."""
    metric = item.get('metric')
    if not metric:
        raise QuotaError('%s.metric: required' % where)
    if metric not in metrics:
        raise QuotaError('%s.metric: unknown metric %r; known metrics: %s'
                         % (where, metric, ', '.join(sorted(metrics)) or '(none)'))
    if metric in seen:
        raise QuotaError('%s.metric: metric %s is listed twice' % (where, metric))
    if item.get('limit') is None:
        raise QuotaError('%s.limit: required; use "unlimited" for no limit' % where)
    return (metric, parse_limit(item['limit'], where + '.limit', metrics[metric]),
            check_choice(item.get('period') or 'month', PERIODS, where + '.period'),
            check_choice(item.get('mode') or 'hard', MODES, where + '.mode'))


def check_choice(value, choices, field):
    if value is not None and value not in choices:
        raise QuotaError('%s: must be one of %s; got %r' % (field, ', '.join(choices), value))
    return value
