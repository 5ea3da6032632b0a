"""Quota value parsing (module_utils/quotas.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ansible_collections.selfbase.platform.plugins.module_utils import quotas
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError


@pytest.mark.parametrize("value, unit, expected", [
    (1000, "count", 1000),
    ("100k", "count", 100_000),
    ("2.5M", "requests", 2_500_000),
    ("10GB", "bytes", 10_000_000_000),
    ("1TB", "bytes", 10 ** 12),
    ("1 GiB", "bytes", 2 ** 30),
    ("512MiB", "bytes", 512 * 2 ** 20),
    ("0", "count", 0),
    ("unlimited", "count", None),
    (None, "bytes", None),
])
def test_parse_limit(value, unit, expected):
    assert quotas.parse_limit(value, "limit", unit) == expected


@pytest.mark.parametrize("value, unit, message", [
    (-1, "count", "limit: must not be negative"),
    ("-5", "count", "limit: must not be negative"),
    ("lots", "count", "limit: must be a number"),
    ("10GB", "count", "byte unit 'GB' used on a count metric"),
    ("10XB", "bytes", "unknown unit 'XB'"),
    ("1.5", "count", "is not a whole number"),
    (True, "count", "limit: must be a number"),
])
def test_parse_limit_rejects(value, unit, message):
    with pytest.raises(quotas.QuotaError, match=message):
        quotas.parse_limit(value, "limit", unit)


def test_parse_price():
    assert quotas.parse_price("0.0001", "overage_price") == Decimal("0.0001")
    assert quotas.parse_price(None, "overage_price") is None
    with pytest.raises(quotas.QuotaError, match="overage_price: must be a non-negative number"):
        quotas.parse_price("-1", "overage_price")
    with pytest.raises(quotas.QuotaError, match="overage_price: must be a non-negative number"):
        quotas.parse_price("free", "overage_price")


def test_check_choice():
    assert quotas.check_choice("soft", quotas.MODES, "mode") == "soft"
    with pytest.raises(quotas.QuotaError, match="mode: must be one of hard, soft, overage; got 'hardest'"):
        quotas.check_choice("hardest", quotas.MODES, "mode")


def test_input_errors_share_one_base_class():
    from ansible_collections.selfbase.platform.plugins.module_utils import billing, tenancy
    assert all(issubclass(cls, InputError) for cls in (quotas.QuotaError, billing.BillingError, tenancy.TenancyError))
