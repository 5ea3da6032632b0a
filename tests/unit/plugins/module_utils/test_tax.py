"""Tax details of tenant_subscription (module_utils/tax.py) with plain dicts."""

from __future__ import annotations

import pytest

from ansible_collections.selfbase.platform.plugins.module_utils import tax
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError

US = dict(line1="1 Main St", line2=None, city="New York", state="NY", postal_code="10001", country="US")


def params(**kw):
    p = dict(tenant="acme", automatic_tax=None, billing_address=None, tax_exempt=None, tax_ids=None)
    p.update(kw)
    return p


@pytest.mark.parametrize("address,placed", [
    (US, True), (dict(US, postal_code="10001-1234"), True), (dict(US, postal_code="1000"), False),
    ({"country": "DE"}, True), ({"country": "de"}, False), ({"country": "CA", "postal_code": "K1A 0B1"}, True),
    ({"country": "CA"}, False), (None, False)])
def test_stripe_tax_places_a_country_and_north_american_postal_codes(address, placed):
    assert tax.located(address) is placed


@pytest.mark.parametrize("kw,field", [
    ({"billing_address": dict(US, country="USA")}, "billing_address.country"),
    ({"billing_address": dict(US, postal_code=None)}, "billing_address.postal_code"),
    ({"tax_ids": [{"type": "vat", "value": "1"}]}, "tax_ids[0].type"),
    ({"tax_ids": [{"type": "gb_vat", "value": "GB12345678"}]}, "tax_ids[0].value"),
    ({"tax_ids": [{"type": "us_ein", "value": "123456789"}]}, "tax_ids[0].value"),
    ({"tax_ids": [{"type": "eu_vat", "value": "DE123456789"}, {"type": "eu_vat", "value": "DE123456789"}]},
     "tax_ids[1]"),
])
def test_bad_tax_details_name_their_field(kw, field):
    with pytest.raises(InputError, match=r"^%s: " % field.replace("[", r"\[").replace("]", r"\]")):
        tax.check_tax_params(params(**kw))


def test_good_tax_details_pass():
    tax.check_tax_params(params(billing_address=US, tax_ids=[
        {"type": "eu_vat", "value": "FR12345678901"}, {"type": "gb_vat", "value": "GB123456789012"},
        {"type": "au_abn", "value": "12345678912"}, {"type": "ch_vat", "value": "CHE-123.456.789 MWST"}]))


def test_the_types_come_from_the_sdk():
    types = tax.tax_id_types()
    assert {"eu_vat", "gb_vat", "us_ein", "au_abn", "ca_bn"} <= types and "vat" not in types


def test_a_new_customer_gets_its_details_in_one_create():
    p = params(automatic_tax=True, billing_address=US, tax_exempt="reverse",
               tax_ids=[{"type": "us_ein", "value": "12-3456789"}])
    assert tax.customer_tax_params(p, None) == {
        "address": {k: v for k, v in US.items() if v}, "tax": {"validate_location": "immediately"},
        "tax_exempt": "reverse", "tax_id_data": [{"type": "us_ein", "value": "12-3456789"}]}


def test_an_address_is_compared_line_by_line_and_cleared_lines_are_sent_empty():
    customer = {"address": dict(US, line2="Suite 5"), "tax_exempt": "none"}
    assert tax.customer_tax_params(params(billing_address=US), customer) == {"address": dict(US, line2="")}
    assert tax.customer_tax_params(params(billing_address=dict(US, line2="Suite 5")), customer) == {}
    assert tax.customer_tax_params(params(), customer) == {}  # not declared: left as the customer set it


def test_tax_ids_are_added_and_removed_to_match_the_list():
    have = [{"id": "txi_1", "type": "us_ein", "value": "12-3456789"},
            {"id": "txi_2", "type": "eu_vat", "value": "DE123456789"}]
    p = params(tax_ids=[{"type": "eu_vat", "value": "DE123456789"}, {"type": "gb_vat", "value": "GB123456789"}])
    writes = tax.tax_id_writes(p, {"id": "cus_1"}, have)
    assert [(w["what"], w.get("id"), w.get("params")) for w in writes] == [
        ("tax_id", None, {"type": "gb_vat", "value": "GB123456789"}), ("tax_id_delete", "txi_1", None)]
    assert tax.tax_id_writes(params(), {"id": "cus_1"}, have) == []
    assert {w["id"] for w in tax.tax_id_writes(params(tax_ids=[]), {"id": "cus_1"}, have)} == {"txi_1", "txi_2"}


class _Settings:
    def __init__(self, status):
        self.status = status

    def get(self, path):
        assert path == "/v1/tax/settings"
        return {"status": self.status, "status_details": {"pending": {"missing_fields": ["head_office"]}}}


def test_automatic_tax_needs_an_active_account_and_a_placed_customer():
    with pytest.raises(InputError, match=r"^automatic_tax: Stripe Tax is not active .*missing: head_office"):
        tax.check_automatic_tax(params(automatic_tax=True, billing_address=US), _Settings("pending"), None)
    with pytest.raises(InputError, match=r"^billing_address: tenant acme has no address"):
        tax.check_automatic_tax(params(automatic_tax=True), _Settings("active"), {"address": {"country": "US"}})
    tax.check_automatic_tax(params(automatic_tax=True), _Settings("active"), {"address": US})
    tax.check_automatic_tax(params(automatic_tax=False), None, None)  # nothing read
