"""Stripe Tax and customer tax IDs of the Stripe fake (mixed into FakeStripe).

State rules, besides the SDK's typed parameters (checked before these run):
- Stripe Tax is ``pending`` until the account's head office address (with a country) is set in its settings, and
  ``active`` after; a subscription with ``automatic_tax[enabled]`` is refused while it is pending;
- a customer is placed by its address: a two-letter country, and a postal code in the US and Canada; a subscription
  with automatic tax is refused for a customer that cannot be placed (``customer_tax_location_invalid``), and so is
  an address written with ``tax[validate_location]=immediately``;
- a tax ID has a type of the pinned API version and, for the types whose format is documented with an example here
  (eu_vat, gb_vat, us_ein, au_abn, ca_bn), a value of that format (``tax_id_invalid``); a tax ID cannot change, only
  be deleted; ``customer.tax_id.created`` and ``customer.tax_id.deleted`` are sent;
- a registration needs a country, ``active_from`` and options for that country (a state in the US);
- an invoice of a subscription with automatic tax carries ``total_taxes``: the rate of the customer's place when
  the account has an active registration there (``standard_rated``), else nothing (``not_collecting``); an exempt
  customer pays none (``customer_exempt``), a reverse-charge one none (``reverse_charge``). Tax is added to the
  total (exclusive) unless the price or the settings' default say ``inclusive``. The rates are this fake's (Stripe
  computes them); tests compare the mirror with the invoice, never with a rate.
"""

from __future__ import annotations

import re
import typing

EU = {"AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "EL", "ES", "FI", "FR", "HR", "HU", "IE", "IT", "LT", "LU",
      "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK", "XI"}
# type -> (country prefix of the value, or None, and the rest's pattern), from Stripe's examples of each type
TAX_ID_RULES = {"eu_vat": (EU, r"[0-9A-Z+*]{2,13}"), "gb_vat": ({"GB"}, r"\d{9}|\d{12}"),
                "us_ein": (None, r"\d\d-\d{7}"), "au_abn": (None, r"\d{11}"), "ca_bn": (None, r"\d{9}")}
POSTAL = {"US": r"\d{5}(-\d{4})?", "CA": r"[A-Za-z]\d[A-Za-z] ?\d[A-Za-z]\d"}
RATES = {"US": 8.875, "CA": 5.0, "DE": 19.0, "FR": 20.0, "GB": 20.0, "AU": 10.0}  # percent, this fake's


def _tax_id_types():
    from stripe.params import CustomerCreateTaxIdParams
    return set(typing.get_args(typing.get_args(CustomerCreateTaxIdParams.__annotations__["type"])[0]))


class TaxMixin:
    """Routes and rules for /v1/tax/settings, /v1/tax/registrations, customer tax IDs, and automatic tax on
    subscriptions and their invoices."""

    def tax_routes(self):
        return [
            ("GET", r"/v1/tax/settings", self.tax_settings_get),
            ("POST", r"/v1/tax/settings", self.tax_settings_update),
            ("POST", r"/v1/tax/registrations", self.tax_registration_create),
            ("GET", r"/v1/tax/registrations", self.tax_registration_list),
            ("POST", r"/v1/customers/([^/]+)/tax_ids", self.tax_id_create),
            ("GET", r"/v1/customers/([^/]+)/tax_ids", self.tax_id_list),
            ("DELETE", r"/v1/customers/([^/]+)/tax_ids/([^/]+)", self.tax_id_delete),
        ]

    # --- the account's settings and registrations
    def _settings(self):
        return self.db.setdefault("tax_settings", {
            "object": "tax.settings", "defaults": {"provider": "stripe", "tax_behavior": None,
                                                   "tax_code": "txcd_10000000"},
            "head_office": None, "livemode": False, "status": "pending",
            "status_details": {"pending": {"missing_fields": ["head_office"]}}})

    def tax_settings_get(self, p):
        return self._settings()

    def tax_settings_update(self, p):
        settings = self._settings()
        for k, v in (p.get("defaults") or {}).items():
            settings["defaults"][k] = v
        if "head_office" in p:
            address = (p["head_office"] or {}).get("address") or {}
            if not address.get("country"):
                raise self.bad("head_office[address][country]", "Missing required param: "
                               "head_office[address][country].", "parameter_missing")
            settings["head_office"] = {"address": {k: address.get(k) for k in
                                                   ("city", "country", "line1", "line2", "postal_code", "state")}}
            settings.update(status="active", status_details={"active": {}})
        return settings

    def tax_registration_create(self, p):
        for name in ("country", "active_from", "country_options"):
            self._require(p, name)
        country = p["country"]
        options = (p.get("country_options") or {}).get(country.lower())
        if not options or not options.get("type"):
            raise self.bad("country_options[%s][type]" % country.lower(), "Missing required param: country_options"
                           "[%s][type]." % country.lower(), "parameter_missing")
        if country == "US" and not options.get("state"):
            raise self.bad("country_options[us][state]", "Missing required param: country_options[us][state].",
                           "parameter_missing")
        start = self.now() if p["active_from"] == "now" else int(p["active_from"])
        return self._new("tax_registrations", {"active_from": start, "country": country,
                                               "country_options": {country.lower(): options}, "expires_at": None,
                                               "status": "active" if start <= self.now() else "scheduled"})

    def tax_registration_list(self, p):
        return self._list("tax_registrations", self._paging(p), "/v1/tax/registrations")

    # --- where a customer is, for tax
    @staticmethod
    def placed(address):
        address = address or {}
        country = address.get("country") or ""
        return bool(re.fullmatch("[A-Z]{2}", country)) and (
            country not in POSTAL or bool(re.fullmatch(POSTAL[country], address.get("postal_code") or "")))

    def _registered(self, address):
        return any(r["country"] == address.get("country") and r["active_from"] <= self.now()
                   and (r["country"] != "US" or r["country_options"]["us"].get("state") == address.get("state"))
                   for r in self.db["tax_registrations"].values())

    def customer_tax(self, customer):
        """The customer's ``tax`` (expand=tax)."""
        address = customer.get("address") or {}
        if not self.placed(address):
            status, location = "unrecognized_location", None
        else:
            location = {"country": address["country"], "source": "billing_address", "state": address.get("state")}
            status = "supported" if self._registered(address) else "not_collecting"
        return {"automatic_tax": status, "ip_address": None, "location": location, "provider": "stripe"}

    def check_customer_tax(self, p, customer):
        """Before a customer write: its tax IDs, and an address Stripe Tax must place when asked to."""
        for i, datum in enumerate((p.get("tax_id_data") or {}).values()):
            self._check_tax_id(datum, "tax_id_data[%d]" % i)
        validate = (p.get("tax") or {}).get("validate_location")
        address = p["address"] if "address" in p else customer.get("address")
        if validate == "immediately" and not self.placed(address or {}):
            raise self.bad("address", "The customer's location isn't recognized.", "customer_tax_location_invalid")

    def customer_tax_ids_created(self, customer, p):
        for datum in (p.get("tax_id_data") or {}).values():
            self._new_tax_id(customer, datum)

    # --- tax IDs
    def _check_tax_id(self, p, prefix=""):
        name = (prefix + "[%s]") if prefix else "%s"
        for field in ("type", "value"):
            if not p.get(field):
                raise self.bad(name % field, "Missing required param: %s." % (name % field), "parameter_missing")
        if p["type"] not in _tax_id_types():
            raise self.bad(name % "type", "Invalid type: must be one of the tax ID types.")
        countries, rest = TAX_ID_RULES.get(p["type"], (None, r"\S.*"))
        value = p["value"]
        if countries is not None:
            if value[:2] not in countries:
                raise self.bad(name % "value", "Invalid value for %s." % p["type"], "tax_id_invalid")
            value = value[2:]
        if not re.fullmatch(rest, value):
            raise self.bad(name % "value", "Invalid value for %s." % p["type"], "tax_id_invalid")

    def _new_tax_id(self, customer, p):
        country = p["value"][:2] if p["type"] in ("eu_vat", "gb_vat") else p["type"][:2].upper()
        tax_id = self._new("tax_ids", {
            "country": "GR" if country == "EL" else country, "customer": customer["id"], "livemode": False,
            "owner": {"type": "customer", "customer": customer["id"]}, "type": p["type"], "value": p["value"],
            "verification": {"status": "pending" if p["type"] in ("eu_vat", "gb_vat") else "unavailable",
                             "verified_address": None, "verified_name": None}})
        self._emit("customer.tax_id.created", self.out(tax_id))
        return tax_id

    def _live_customer(self, oid):
        customer = self._find("customers", oid)
        if customer.get("_deleted"):
            raise self.missing("customer", oid, "customer")
        return customer

    def tax_id_create(self, p, oid):
        customer = self._live_customer(oid)
        self._check_tax_id(p)
        return self._new_tax_id(customer, p)

    def tax_id_list(self, p, oid):
        self._live_customer(oid)
        return self._list("tax_ids", self._paging(p), "/v1/customers/%s/tax_ids" % oid,
                          lambda t: t["customer"] == oid)

    def customer_tax_ids(self, oid):
        """The customer's ``tax_ids`` (expand=tax_ids)."""
        return self.tax_id_list({"limit": "100"}, oid)

    def tax_id_delete(self, p, oid, tid):
        self._live_customer(oid)
        tax_id = self.db["tax_ids"].get(tid)
        if tax_id is None or tax_id["customer"] != oid:
            raise self.missing("tax_id", tid, "id")
        del self.db["tax_ids"][tid]
        self._emit("customer.tax_id.deleted", self.out(tax_id))
        return {"id": tid, "object": "tax_id", "deleted": True}

    # --- automatic tax on subscriptions and their invoices
    def automatic_tax(self, p, customer):
        """The subscription's ``automatic_tax`` for a create or update with ``automatic_tax`` (None without)."""
        if "automatic_tax" not in p:
            return None
        enabled = (p["automatic_tax"] or {}).get("enabled") == "true"
        if enabled and self._settings()["status"] != "active":
            raise self.bad("automatic_tax[enabled]", "Stripe Tax has not been activated on your account: its "
                           "head office address is missing.")
        if enabled and not self.placed(customer.get("address") or {}):
            raise self.bad("customer_tax_location", "The customer's location isn't recognized.",
                           "customer_tax_location_invalid")
        return {"disabled_reason": None, "enabled": enabled,
                "liability": {"type": "self"} if enabled else None}

    def invoice_taxes(self, sub, amount):
        """(total_taxes, tax added to the total) of an invoice of ``amount`` after discounts."""
        if not (sub.get("automatic_tax") or {}).get("enabled"):
            return [], 0
        customer = self.db["customers"][sub["customer"]]
        address = customer.get("address") or {}
        items = [self.db["subscription_items"][i]["price"] for i in sub["_items"]]
        behavior = next((pr.get("tax_behavior") for pr in items if pr.get("tax_behavior") not in (None, "unspecified")),
                        None) or self._settings()["defaults"]["tax_behavior"] or "exclusive"
        reason, rate = "not_collecting", 0.0
        if customer.get("tax_exempt") == "exempt":
            reason = "customer_exempt"
        elif customer.get("tax_exempt") == "reverse":
            reason = "reverse_charge"
        elif self._registered(address):
            reason, rate = "standard_rated", RATES.get(address["country"], 0.0)
        if behavior == "inclusive":
            tax = round(amount - amount / (1 + rate / 100))
            taxable = amount - tax
        else:
            tax, taxable = round(amount * rate / 100), amount
        return ([{"amount": tax, "tax_behavior": behavior, "taxability_reason": reason,
                  "tax_rate_details": {"tax_rate": "txr_fake_%s" % (address.get("country") or "none").lower()},
                  "taxable_amount": taxable, "type": "tax_rate_details"}],
                tax if behavior == "exclusive" else 0)
