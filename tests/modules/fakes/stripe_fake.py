"""A stateful fake of the parts of Stripe's v1 API the collection calls.

Contract fake for tests and the demo (Stripe's live API cannot be reached here).
It follows Stripe's documented behaviour where the modules depend on it:

- form-encoded bodies with nested brackets (``a[b][0][c]=v``), GET/DELETE params in the query string;
- ``Authorization: Bearer sk_...`` required (401 otherwise);
- every request is first checked against the typed parameters of the pinned ``stripe`` SDK for its method
  (``stripe_sdk_params.py``): unknown or missing keys at any depth, types, and enum values (event types of webhook
  endpoints, API versions, payment behaviours...) -> 400 ``invalid_request_error`` naming ``param``; immutable
  fields (a price's amount, currency, recurrence) are simply not update parameters, so they are rejected the same
  way; the hand-written rules below add what the SDK cannot say (state, cross-field rules);
- list envelope ``{object: list, data, has_more, url}``, newest first, ``limit``/``starting_after``/``ending_before``;
- ``Idempotency-Key`` on POST, kept 24 hours: same key and same request -> the stored response is replayed
  (``Idempotent-Replayed: true``), a 500 included (an injected 500 is an execution that failed: it is stored,
  with ``Stripe-Should-Retry: false``, and replayed like a success); same key with other parameters -> 400
  ``idempotency_error``; requests that did not execute are not stored (validation errors, 429, 503, drops),
  while one that executed and failed is (a 402 is replayed like a success);
- subscriptions follow the payment state: a trial starts ``trialing``; ``collection_method=send_invoice`` or a
  default payment method (:meth:`FakeStripe.attach_payment_method`) starts ``active`` (``default_incomplete``:
  ``incomplete``); without one, ``allow_incomplete`` (Stripe's default) and ``default_incomplete`` start
  ``incomplete`` with an open first invoice; 23 hours later (:meth:`FakeStripe.advance`) the invoice is voided and
  the subscription becomes ``incomplete_expired``; an incomplete one changes only its ``metadata`` and
  ``default_source``; and
  ``error_if_incomplete`` is refused with 402; dunning states come from :meth:`FakeStripe.set_status`;
- events carry ``previous_attributes`` where an object changed, ``/v1/events`` takes ``type`` or ``types`` (not
  both) and serves the last 30 days only;
- fault injection (:meth:`FakeStripe.fail_next`) and a request log (:attr:`FakeStripe.requests`).

Use from tests::

    from fakes.stripe_fake import FakeStripe
    with FakeStripe() as fake:        # or: fake = FakeStripe().start(); ...; fake.stop()
        fake.url, fake.api_key
        fake.fail_next(status=500, count=1, after_store=True, method="POST", path_prefix="/v1/products")
        fake.writes(), fake.reads(), fake.objects("products")

Standalone (demo): ``python tests/modules/fakes/stripe_fake.py --port 12111 --state-file state.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import hmac
import http.client
import json
import operator
import os
import random
import re
import secrets
import socket
import string
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from fakes import stripe_sdk_params
    from fakes.stripe_fake_checkout import CheckoutMixin
    from fakes.stripe_fake_discounts import DiscountsMixin
    from fakes.stripe_fake_entitlements import EntitlementsMixin
    from fakes.stripe_fake_portal import PortalMixin
    from fakes.stripe_fake_tax import TaxMixin
except ImportError:  # standalone (the demo): this file's directory is on sys.path
    import stripe_sdk_params
    from stripe_fake_checkout import CheckoutMixin
    from stripe_fake_discounts import DiscountsMixin
    from stripe_fake_entitlements import EntitlementsMixin
    from stripe_fake_portal import PortalMixin
    from stripe_fake_tax import TaxMixin

API_VERSION = "2026-10-28.endive"

# ISO 4217 codes Stripe accepts (lower case), and the zero-decimal ones (amounts are whole units).
CURRENCIES = set(
    "usd aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl bsd bwp byn bzd cad cdf chf "
    "clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp gel gip gmd gnf gtq gyd hkd hnl htg huf idr ils "
    "inr isk jmd jod jpy kes kgs khr kmf krw kwd kyd kzt lak lbp lkr lrd lsl mad mdl mga mkd mmk mnt mop mur mvr mwk "
    "mxn myr mzn nad ngn nio nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub rwf sar sbd scr sek sgd shp "
    "sle sos srd std szl thb tjs tnd top try ttd twd tzs uah ugx uyu uzs vnd vuv wst xaf xcd xof xpf yer zar zmw".split())
ZERO_DECIMAL = set("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
WEBHOOK_LIMIT = 16  # Stripe's limit of webhook endpoints per account and mode
EVENT_DAYS = 30  # Stripe serves events of the last 30 days only
RANGE = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}  # created[...] filters

# Parameter specs: "str", "int", "bool", "meta" (string map, "" clears), "decimal",
# ("enum", ...values), ["str"] (list of strings), [{...}] (list of dicts), {...} (nested dict).
META = "meta"
EXPAND = {"expand": ["str"]}
LIST = dict(EXPAND, limit="int", starting_after="str", ending_before="str")

PRODUCT_FIELDS = dict(EXPAND, name="str", active="bool", description="str", metadata=META, statement_descriptor="str",
                      tax_code="str", unit_label="str", url="str", images=["str"], shippable="bool",
                      marketing_features=[{"name": "str"}])
PRODUCT_CREATE = dict(PRODUCT_FIELDS, id="str")
PRODUCT_UPDATE = dict(PRODUCT_FIELDS, default_price="str")
PRODUCT_LIST = dict(LIST, active="bool", ids=["str"], shippable="bool", url="str")

RECURRING = {"interval": ("enum", "day", "week", "month", "year"), "interval_count": "int",
             "usage_type": ("enum", "licensed", "metered"), "meter": "str", "trial_period_days": "int"}
PRICE_CREATE = dict(EXPAND, currency="str", product="str", product_data={"name": "str", "metadata": META},
                    unit_amount="int", unit_amount_decimal="decimal", recurring=RECURRING, lookup_key="str",
                    transfer_lookup_key="bool", nickname="str", metadata=META, active="bool",
                    tax_behavior=("enum", "exclusive", "inclusive", "unspecified"), billing_scheme=("enum", "per_unit"))
PRICE_UPDATE = dict(EXPAND, active="bool", lookup_key="str", transfer_lookup_key="bool", metadata=META, nickname="str",
                    tax_behavior=("enum", "exclusive", "inclusive", "unspecified"))
PRICE_LIST = dict(LIST, active="bool", currency="str", lookup_keys=["str"], product="str",
                  type=("enum", "one_time", "recurring"),
                  recurring={"interval": ("enum", "day", "week", "month", "year"), "meter": "str",
                             "usage_type": ("enum", "licensed", "metered")})

METER_CREATE = dict(EXPAND, display_name="str", event_name="str",
                    default_aggregation={"formula": ("enum", "sum", "count", "last")},
                    customer_mapping={"event_payload_key": "str", "type": ("enum", "by_id")},
                    value_settings={"event_payload_key": "str"}, event_time_window=("enum", "day", "hour"))
METER_UPDATE = dict(EXPAND, display_name="str")
METER_LIST = dict(LIST, status=("enum", "active", "inactive"))
METER_EVENT_CREATE = dict(EXPAND, event_name="str", identifier="str", payload=META, timestamp="int")
METER_SUMMARIES = dict(LIST, customer="str", start_time="int", end_time="int",
                       value_grouping_window=("enum", "day", "hour"))
METER_EVENT_WINDOW = 35 * 86400  # meter event timestamps: within the past 35 days, at most 5 minutes ahead
# Stripe enforces a meter event identifier's uniqueness, and keeps idempotency keys, for 24 hours (then may forget)
IDENTIFIER_WINDOW = 24 * 3600

ADDRESS = {k: "str" for k in ("line1", "line2", "city", "state", "postal_code", "country")}
CUSTOMER_FIELDS = dict(EXPAND, name="str", email="str", description="str", metadata=META, phone="str",
                       preferred_locales=["str"], address=ADDRESS, tax_exempt=("enum", "none", "exempt", "reverse"),
                       tax={"ip_address": "str", "validate_location": ("enum", "deferred", "immediately")})
CUSTOMER_CREATE = dict(CUSTOMER_FIELDS, tax_id_data=[{"type": "str", "value": "str"}])
CUSTOMER_LIST = dict(LIST, email="str")
CUSTOMER_SEARCH = dict(EXPAND, query="str", limit="int", page="str")

PRORATION = ("enum", "create_prorations", "none", "always_invoice")
SUB_COMMON = dict(EXPAND, metadata=META, proration_behavior=PRORATION, cancel_at_period_end="bool",
                  description="str", default_payment_method="str",
                  collection_method=("enum", "charge_automatically", "send_invoice"), days_until_due="int",
                  payment_behavior=("enum", "allow_incomplete", "default_incomplete", "error_if_incomplete",
                                    "pending_if_incomplete"),
                  discounts=[{"coupon": "str", "promotion_code": "str", "discount": "str"}],
                  automatic_tax={"enabled": "bool", "liability": {"type": "str", "account": "str"}})
SUB_CREATE = dict(SUB_COMMON, customer="str", trial_period_days="int", trial_end="int",
                  items=[{"price": "str", "quantity": "int", "metadata": META}])
SUB_UPDATE = dict(SUB_COMMON, trial_end="str",
                  items=[{"id": "str", "price": "str", "quantity": "int", "metadata": META, "deleted": "bool"}])
SUB_LIST = dict(LIST, customer="str", price="str",
                status=("enum", "active", "all", "canceled", "ended", "incomplete", "incomplete_expired",
                        "past_due", "paused", "trialing", "unpaid"))
SUB_CANCEL = dict(EXPAND, invoice_now="bool", prorate="bool")

WEBHOOK_FIELDS = dict(EXPAND, url="str", enabled_events=["str"], description="str", metadata=META)
WEBHOOK_CREATE = dict(WEBHOOK_FIELDS, api_version="str", connect="bool")
WEBHOOK_UPDATE = dict(WEBHOOK_FIELDS, disabled="bool")

EVENT_LIST = dict(LIST, created={"gt": "int", "gte": "int", "lt": "int", "lte": "int"}, type="str", types=["str"],
                  delivery_success="bool")
INVOICE_LIST = dict(LIST, customer="str", subscription="str",
                    status=("enum", "draft", "open", "paid", "uncollectible", "void"))

PREFIX = {"products": "prod", "prices": "price", "billing/meters": "mtr", "customers": "cus", "subscriptions": "sub",
          "subscription_items": "si", "webhook_endpoints": "we", "events": "evt", "invoices": "in",
          "payment_methods": "pm", "coupons": "co", "promotion_codes": "promo", "discounts": "di",
          "tax_ids": "txi", "tax_registrations": "taxreg", "billing_portal/configurations": "bpc",
          "entitlements/features": "feat", "product_features": "prodft",
          "checkout/sessions": "cs_test", "billing_portal/sessions": "bps"}
OBJECT = {"products": "product", "prices": "price", "billing/meters": "billing.meter", "customers": "customer",
          "subscriptions": "subscription", "subscription_items": "subscription_item",
          "webhook_endpoints": "webhook_endpoint", "events": "event", "invoices": "invoice",
          "payment_methods": "payment_method", "coupons": "coupon", "promotion_codes": "promotion_code",
          "discounts": "discount", "tax_ids": "tax_id", "tax_registrations": "tax.registration",
          "billing_portal/configurations": "billing_portal.configuration",
          "entitlements/features": "entitlements.feature", "product_features": "product_feature",
          "checkout/sessions": "checkout.session", "billing_portal/sessions": "billing_portal.session"}
NAMES = {"billing/meters": "billing meter", "webhook_endpoints": "webhook endpoint",
         "promotion_codes": "promotion code", "billing_portal/configurations": "billing portal configuration",
         "entitlements/features": "feature", "checkout/sessions": "checkout session"}


class ApiError(Exception):
    def __init__(self, status, message, param=None, code=None, type_="invalid_request_error", headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers or {}

    def body(self):
        err = {"type": self.type, "message": self.message}
        if self.param is not None:
            err["param"] = self.param
        if self.code is not None:
            err["code"] = self.code
            err["doc_url"] = "https://stripe.com/docs/error-codes/" + self.code.replace("_", "-")
        return {"error": err}


def bad(param, message, code=None):
    return ApiError(400, message, param=param, code=code)


# ---------------------------------------------------------------- form decoding

def parse_form(pairs):
    """[("a[b][0]", "x"), ...] -> nested dicts; lists are dicts keyed by index until coerced."""
    out = {}
    for key, value in pairs:
        m = re.match(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$", key)
        if not m:
            raise bad(key, "Invalid parameter name: %s" % key)
        parts = [m.group(1)] + re.findall(r"\[([^\[\]]*)\]", m.group(2))
        node = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part == "":  # a[]=x: append
                part = str(len(node))
            if last:
                node[part] = value
            else:
                nxt = node.get(part)
                if not isinstance(nxt, dict):
                    if nxt is not None and nxt != "":
                        raise bad(parts[0], "Invalid value for %s: expected a hash" % key)
                    nxt = node[part] = {}
                node = nxt
    return out


def _path(prefix, key):
    return "%s[%s]" % (prefix, key) if prefix else key


def coerce(spec, data, prefix=""):
    """Validate and type the decoded parameters against a spec, the way Stripe reports errors."""
    out = {}
    for key, value in data.items():
        name = _path(prefix, key)
        if key not in spec:
            raise bad(name, "Received unknown parameter: %s" % name, code="parameter_unknown")
        out[key] = _coerce_value(spec[key], value, name)
    return out


def _coerce_value(kind, value, name):
    if isinstance(kind, dict):
        if value == "":
            return None  # unset
        if not isinstance(value, dict):
            raise bad(name, "Invalid object")
        return coerce(kind, value, name)
    if isinstance(kind, list):
        if value == "":
            return []
        if not isinstance(value, dict) or not all(k.isdigit() for k in value):
            raise bad(name, "Invalid array")
        return [_coerce_value(kind[0], value[k], "%s[%s]" % (name, k)) for k in sorted(value, key=int)]
    if isinstance(value, dict):
        if kind == META:
            for k, v in value.items():
                if isinstance(v, dict):
                    raise bad(_path(name, k), "Invalid metadata value")
            return dict(value)
        raise bad(name, "Invalid %s: must be a %s, not a hash" % (name, "string" if kind == "str" else kind))
    if kind == META:
        if value != "":
            raise bad(name, "Invalid metadata: must be a hash")
        return {}
    if value == "" and kind != "str":
        return None
    if kind == "int":
        if not re.match(r"^-?\d+$", value):
            raise bad(name, "Invalid integer: %s" % value)
        return int(value)
    if kind == "bool":
        if value not in ("true", "false"):
            raise bad(name, "Invalid boolean: %s" % value)
        return value == "true"
    if kind == "decimal":
        if not re.match(r"^-?\d+(\.\d+)?$", value):
            raise bad(name, "Invalid decimal: %s" % value)
        return value
    if isinstance(kind, tuple):
        if value not in kind[1:]:
            raise bad(name, "Invalid %s: must be one of %s" % (name, ", ".join(kind[1:])))
        return value
    return value


def _iso(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch))


def _epoch(iso):
    try:
        return int(datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except (AttributeError, ValueError):
        return None


def _strip_zeros(dec):
    if "." in dec:
        dec = dec.rstrip("0").rstrip(".")
    return dec


# ---------------------------------------------------------------- the fake


@dataclasses.dataclass
class Logged:
    method: str
    path: str
    params: dict
    idempotency_key: str | None
    status: int | None = None
    replayed: bool = False
    fault: str | None = None
    stripe_version: str | None = None


@dataclasses.dataclass
class Fault:
    status: int | None = 500
    count: int = 1
    after_store: bool = False
    drop: bool = False
    delay: float = 0.0
    path_prefix: str = ""
    method: str | None = None
    should_retry: str | None = None


class FakeStripe(DiscountsMixin, TaxMixin, PortalMixin, EntitlementsMixin, CheckoutMixin):
    """The fake server. Thread-safe: each request is handled under one lock (except injected delays)."""

    bad = staticmethod(bad)

    def __init__(self, port=0, host="127.0.0.1", state_file=None, api_key=None):
        self.host, self.port = host, port
        self.state_file = state_file
        # When set, only this key is accepted; otherwise any sk_/rk_ key is.
        self.api_key = api_key or "sk_test_fake_" + secrets.token_hex(8)
        self._strict_key = api_key is not None
        self.lock = threading.RLock()
        self.requests: list[Logged] = []
        self.faults: list[Fault] = []
        self.db: dict[str, dict] = {k: {} for k in PREFIX}
        self.db["meter_events"] = []  # every event that counts, in order: a resent identifier counts again
        self.db["meter_identifiers"] = {}  # identifier -> when Stripe took it; forgotten after 24 hours
        self.db["v2_events"] = []  # meter error reports, oldest first (GET /v2/core/events)
        self.meter_errors: list[dict] = []  # what Stripe would report asynchronously (meter error reports)
        self.idem: dict[str, dict] = {}
        self.seq = 0
        self.clock = 0  # seconds added to the wall clock (advance())
        self._server = None
        self._thread = None
        if state_file and os.path.exists(state_file):
            with open(state_file, encoding="utf-8") as fh:
                state = json.load(fh)
            self.db.update(state["db"])
            self.idem, self.seq = state["idempotency"], state["seq"]

    # --- lifecycle
    def start(self):
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    # --- test helpers
    def fail_next(self, status=500, count=1, after_store=False, drop=False, delay=0.0, path_prefix="", method=None,
                  should_retry=None):
        """Make the next ``count`` requests that match ``method`` (None: any) and ``path_prefix`` fail.

        ``status`` 429/500/...: answer with that status (429 carries ``Stripe-Should-Retry`` when
        ``should_retry`` is "true"/"false"); ``drop``: close the connection without an answer;
        ``after_store``: execute (and store) the request first, then fail; ``delay``: sleep that many
        seconds before handling (for client timeouts). Faults are consumed in the order they were added.
        """
        with self.lock:
            self.faults.append(Fault(status, count, after_store, drop, delay, path_prefix, method and method.upper(),
                                     should_retry))

    def now(self):
        return int(time.time()) + self.clock

    def advance(self, seconds):
        """Let time pass: incomplete subscriptions older than 23 hours expire, as at Stripe: the first invoice is
        voided, and the subscription ends. At a subscription's period end, a cancellation at period end ends it,
        and a price change scheduled for then (``schedule_price_change``) takes effect."""
        with self.lock:
            self.clock += seconds
            now = self.now()
            for sub in self.db["subscriptions"].values():
                self._period_ends(sub, now)
                if sub["status"] == "incomplete" and now - sub["created"] >= 23 * 3600:
                    inv = self.db["invoices"].get(sub["latest_invoice"])
                    if inv is not None and inv["status"] == "open":
                        inv["status"], inv["amount_remaining"] = "void", 0
                        inv["status_transitions"]["voided_at"] = now
                        self._emit("invoice.voided", self.out(inv))
                    before = self._sub_view(sub)
                    sub.update(status="incomplete_expired", ended_at=now, canceled_at=now)
                    self._emit("customer.subscription.updated", self._sub_view(sub), before)
            self._save()

    def schedule_price_change(self, sub_id, price_id):
        """A downgrade the customer chose in the Customer Portal for the end of the period: Stripe puts the
        subscription on a schedule whose next phase has the new price; until then nothing else changes."""
        with self.lock:
            sub = self.db["subscriptions"][sub_id]
            price = self._recurring_price(price_id, "price")
            before = self._sub_view(sub)
            sub["schedule"] = "sub_sched_%s" % sub_id[4:]
            sub["_scheduled_price"] = price["id"]
            self._emit("subscription_schedule.created", {"id": sub["schedule"], "object": "subscription_schedule",
                                                         "subscription": sub_id, "customer": sub["customer"],
                                                         "end_behavior": "release", "status": "active"})
            self._emit("customer.subscription.updated", self._sub_view(sub), before)
            self._save()

    def _period_ends(self, sub, now):
        items = [self.db["subscription_items"][i] for i in sub["_items"]]
        if sub["status"] not in ("active", "trialing", "past_due") or not items:
            return
        end = min(i["current_period_end"] for i in items)
        if end > now:
            return
        before = self._sub_view(sub)
        if sub["cancel_at_period_end"]:
            sub.update(status="canceled", canceled_at=sub.get("canceled_at") or end, ended_at=end)
            self._emit("customer.subscription.deleted", self._sub_view(sub))
        elif sub.get("_scheduled_price"):
            price = self.db["prices"][sub.pop("_scheduled_price")]
            item = items[0]
            item.update(price=self.out(price), current_period_start=end,
                        current_period_end=self._period_end(end, price["recurring"]))
            sub["schedule"] = None  # the schedule released the subscription after its last phase
            self._emit("customer.subscription.updated", self._sub_view(sub), before)

    def attach_payment_method(self, customer_id, brand="visa", last4="4242", declines=False):
        """A card the customer saved in the application (Stripe.js): the customer's default payment method.
        A card that ``declines`` fails every charge (Stripe's test card 4000 0000 0000 0002)."""
        with self.lock:
            pm = self._new("payment_methods", {
                "type": "card", "customer": customer_id, "billing_details": {"email": None, "name": None},
                "card": {"brand": brand, "last4": last4, "exp_month": 12, "exp_year": 2030, "funding": "credit",
                         "country": "US"}, "_declines": declines})
            customer = self.db["customers"][customer_id]
            customer["invoice_settings"]["default_payment_method"] = pm["id"]
            self._emit("payment_method.attached", self.out(pm))
            self._emit("customer.updated", self.out(customer))
            self._save()
            return pm["id"]

    def detach_payment_method(self, pm_id):
        """The customer removes a saved card: it no longer names the customer, and stops being its default."""
        with self.lock:
            pm = self.db["payment_methods"][pm_id]
            before = self.out(pm)
            customer = self.db["customers"][pm["customer"]]
            pm["customer"] = None
            self._emit("payment_method.detached", self.out(pm), before)
            if customer["invoice_settings"]["default_payment_method"] == pm_id:
                was = self.out(customer)
                customer["invoice_settings"] = dict(customer["invoice_settings"], default_payment_method=None)
                self._emit("customer.updated", self.out(customer), was)
            self._save()

    def set_status(self, sub_id, status):
        """What Stripe's billing does in the background: past_due after a failed renewal, unpaid or canceled
        when retries run out, paused when a trial ends without a payment method."""
        with self.lock:
            sub = self.db["subscriptions"][sub_id]
            before = self._sub_view(sub)
            if status == "canceled":
                self._cancel(sub)
                self._emit("customer.subscription.deleted", self._sub_view(sub))
            else:
                sub["status"] = status
                self._emit("customer.subscription.updated", self._sub_view(sub), before)
            self._save()

    # --- invoices: what Stripe's billing does at renewal (finalize, charge, retry)
    def invoice(self, sub_id, amount=None):
        """Finalize the subscription's next invoice (open, not yet attempted) for its licensed items."""
        with self.lock:
            inv = self._open_invoice(self.db["subscriptions"][sub_id], "subscription_cycle", amount)
            self._save()
            return inv["id"]

    def _open_invoice(self, sub, reason, amount=None):
        """A finalized, unpaid invoice of the subscription's licensed items (called with the lock held)."""
        sub_id = sub["id"]
        items = [self.db["subscription_items"][i] for i in sub["_items"]]
        lines = [{"id": "il_" + secrets.token_hex(7), "object": "line_item", "description": si["price"]["id"],
                  "amount": (si["price"]["unit_amount"] or 0) * si.get("quantity", 1),
                  "currency": sub["currency"], "quantity": si.get("quantity"),
                  "period": {"start": si["current_period_start"], "end": si["current_period_end"]}}
                 for si in items]
        due = self.discounted(sub, sum(line["amount"] for line in lines)) if amount is None else amount
        taxes, added = self.invoice_taxes(sub, due)
        customer = self.db["customers"][sub["customer"]]
        count = sum(1 for i in self.db["invoices"].values() if i["customer"] == customer["id"]) + 1
        inv = self._new("invoices", {
            "account_country": "US", "amount_due": due + added, "amount_paid": 0, "amount_remaining": due + added,
            "attempt_count": 0, "attempted": False, "billing_reason": reason,
            "collection_method": sub["collection_method"], "currency": sub["currency"],
            "customer": customer["id"], "due_date": None,
            "hosted_invoice_url": "https://invoice.stripe.com/i/acct_fake/test_" + secrets.token_hex(12),
            "invoice_pdf": "https://pay.stripe.com/invoice/acct_fake/test_%s/pdf" % secrets.token_hex(12),
            "lines": {"object": "list", "data": lines, "has_more": False, "total_count": len(lines),
                      "url": "/v1/invoices/upcoming/lines"},
            "metadata": {}, "number": "%s-%04d" % (customer["invoice_prefix"], count),
            "parent": {"type": "subscription_details", "quote_details": None,
                       "subscription_details": {"metadata": {}, "subscription": sub_id}},
            "period_end": items[0]["current_period_start"] if items else self.now(),
            "period_start": items[0]["current_period_start"] if items else self.now(),
            "status": "open", "status_transitions": {"finalized_at": self.now(), "paid_at": None,
                                                     "voided_at": None, "marked_uncollectible_at": None},
            "subtotal": due, "subtotal_excluding_tax": due - sum(t["amount"] for t in taxes) + added,
            "total": due + added, "total_excluding_tax": due - sum(t["amount"] for t in taxes) + added,
            "total_taxes": taxes})
        sub["latest_invoice"] = inv["id"]
        self._emit("invoice.created", self.out(inv))
        self._emit("invoice.finalized", self.out(inv))
        return inv

    def fail_payment(self, invoice_id):
        """A charge attempt on the invoice fails: the subscription becomes past_due."""
        with self.lock:
            inv = self.db["invoices"][invoice_id]
            inv.update(attempt_count=inv["attempt_count"] + 1, attempted=True)
            self._emit("invoice.payment_failed", self.out(inv))
            sub = self.db["subscriptions"][inv["parent"]["subscription_details"]["subscription"]]
            if sub["status"] in ("active", "trialing"):
                before = self._sub_view(sub)
                sub["status"] = "past_due"
                self._emit("customer.subscription.updated", self._sub_view(sub), before)
            self._save()

    def pay(self, invoice_id):
        """The invoice is paid (a retry or a new card succeeded): the subscription is active again."""
        with self.lock:
            inv = self.db["invoices"][invoice_id]
            inv.update(amount_paid=inv["amount_due"], amount_remaining=0, attempt_count=inv["attempt_count"] + 1,
                       attempted=True, status="paid")
            inv["status_transitions"]["paid_at"] = self.now()
            self._emit("invoice.paid", self.out(inv))
            self._emit("invoice.payment_succeeded", self.out(inv))
            sub = self.db["subscriptions"][inv["parent"]["subscription_details"]["subscription"]]
            if sub["status"] in ("past_due", "unpaid"):
                before = self._sub_view(sub)
                sub["status"] = "active"
                self._emit("customer.subscription.updated", self._sub_view(sub), before)
            self._save()

    # --- events and their delivery
    def _emit(self, type_, snapshot, before=None):
        """Record an event (called with the lock held): data.object is the object as it is now; with the object
        as it was (``before``), data.previous_attributes holds the old values of the fields that changed."""
        data = {"object": json.loads(json.dumps(snapshot))}
        if before is not None:
            data["previous_attributes"] = json.loads(json.dumps(
                {k: v for k, v in before.items() if snapshot.get(k) != v}))
        self._new("events", {"api_version": API_VERSION, "data": data, "pending_webhooks": 1,
                             "request": {"id": None, "idempotency_key": None}, "type": type_})
        if type_.startswith("customer.subscription."):
            self._entitlements_changed()

    def events(self, type_prefix=""):
        """Events emitted so far, oldest first."""
        with self.lock:
            return [self.out(e) for e in sorted(self.db["events"].values(), key=lambda e: e["_seq"])
                    if e["type"].startswith(type_prefix)]

    def secret(self):
        """The signing secret of the only webhook endpoint."""
        with self.lock:
            (endpoint,) = self.db["webhook_endpoints"].values()
            return endpoint["_secret"]

    @staticmethod
    def signature(payload, secret, timestamp):
        """Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the endpoint's secret>."""
        mac = hmac.new(secret.encode(), ("%d." % timestamp).encode() + payload, hashlib.sha256).hexdigest()
        return "t=%d,v1=%s" % (timestamp, mac)

    def deliver(self, event, url, secret=None, timestamp=None, payload=None, timeout=10):
        """POST one event to a webhook URL as Stripe does: the JSON body, signed; returns (status, body).
        ``event``: an event dict or id. Status 0: no answer (connection closed or timed out)."""
        if isinstance(event, str):
            with self.lock:
                event = self.out(self.db["events"][event])
        body = payload if payload is not None else json.dumps(event, indent=2).encode()
        stamp = self.now() if timestamp is None else timestamp
        req = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "Stripe-Signature": self.signature(body, secret or self.secret(), stamp)})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")
        except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException):
            return 0, None

    def reset_log(self):
        with self.lock:
            self.requests.clear()

    def writes(self, path_prefix=""):
        return [r for r in self.requests if r.method in ("POST", "DELETE") and r.path.startswith(path_prefix)]

    def reads(self, path_prefix=""):
        return [r for r in self.requests if r.method == "GET" and r.path.startswith(path_prefix)]

    def objects(self, kind):
        """Stored objects of a kind ("products", "prices", "billing/meters", ...) as the API shows them, oldest
        first. Deleted customers are left out."""
        with self.lock:
            objs = sorted((o for o in self.db[kind].values() if not o.get("_deleted")), key=lambda o: o["_seq"])
            return [json.loads(json.dumps(self._view(o))) for o in objs]

    def get(self, kind, oid):
        """One stored object as the API shows it, or None."""
        with self.lock:
            obj = self.db[kind].get(oid)
            return json.loads(json.dumps(self._view(obj))) if obj else None

    def _view(self, obj):
        return self._sub_view(obj) if obj.get("object") == "subscription" else self.out(obj)

    # --- internals
    @staticmethod
    def fingerprint(method, path, raw):
        return hashlib.sha256(json.dumps([method, path, sorted(raw)]).encode()).hexdigest()

    def _take_fault(self, method, path):
        with self.lock:
            for f in self.faults:
                if (f.method is None or f.method == method) and path.startswith(f.path_prefix):
                    f.count -= 1
                    if f.count <= 0:
                        self.faults.remove(f)
                    return f
        return None

    def _save(self):
        if not self.state_file:
            return
        tmp = self.state_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"db": self.db, "idempotency": self.idem, "seq": self.seq}, fh)
        os.replace(tmp, self.state_file)

    def _new(self, kind, fields, oid=None):
        """A new object of ``kind``, with the id given (where Stripe takes one) or a generated one."""
        self.seq += 1
        oid = oid or "%s_%s" % (PREFIX[kind], "".join(random.choices(string.ascii_letters + string.digits, k=14)))
        obj = {"id": oid, "object": OBJECT[kind], "created": self.now(), "livemode": False}
        obj.update(fields)
        obj["_seq"] = self.seq
        self.db[kind][oid] = obj
        return obj

    def _find(self, kind, oid, param="id"):
        obj = self.db[kind].get(oid)
        if obj is None:
            raise self.missing(NAMES.get(kind, kind.rstrip("s")), oid, param)
        return obj

    @staticmethod
    def missing(name, oid, param):
        return ApiError(404 if param == "id" else 400, "No such %s: '%s'" % (name, oid), param=param,
                        code="resource_missing")

    # --- request dispatch (called with the lock held)
    def routes(self):
        """(method, path pattern, handler) of every v1 route."""
        return [
            ("POST", r"/v1/products", self.product_create),
            ("GET", r"/v1/products", self.product_list),
            ("GET", r"/v1/products/([^/]+)", self.product_get),
            ("POST", r"/v1/products/([^/]+)", self.product_update),
            ("DELETE", r"/v1/products/([^/]+)", self.product_delete),
            ("POST", r"/v1/prices", self.price_create),
            ("GET", r"/v1/prices", self.price_list),
            ("GET", r"/v1/prices/([^/]+)", self.price_get),
            ("POST", r"/v1/prices/([^/]+)", self.price_update),
            ("POST", r"/v1/billing/meters", self.meter_create),
            ("GET", r"/v1/billing/meters", self.meter_list),
            ("GET", r"/v1/billing/meters/([^/]+)", self.meter_get),
            ("POST", r"/v1/billing/meters/([^/]+)", self.meter_update),
            ("POST", r"/v1/billing/meters/([^/]+)/(deactivate|reactivate)", self.meter_status),
            ("GET", r"/v1/billing/meters/([^/]+)/event_summaries", self.meter_summaries),
            ("POST", r"/v1/billing/meter_events", self.meter_event_create),
            ("POST", r"/v1/customers", self.customer_create),
            ("GET", r"/v1/customers", self.customer_list),
            ("GET", r"/v1/customers/search", self.customer_search),
            ("GET", r"/v1/customers/([^/]+)", self.customer_get),
            ("POST", r"/v1/customers/([^/]+)", self.customer_update),
            ("DELETE", r"/v1/customers/([^/]+)", self.customer_delete),
            ("POST", r"/v1/subscriptions", self.sub_create),
            ("GET", r"/v1/subscriptions", self.sub_list),
            ("GET", r"/v1/subscriptions/([^/]+)", self.sub_get),
            ("POST", r"/v1/subscriptions/([^/]+)", self.sub_update),
            ("DELETE", r"/v1/subscriptions/([^/]+)", self.sub_cancel),
            ("POST", r"/v1/webhook_endpoints", self.webhook_create),
            ("GET", r"/v1/webhook_endpoints", self.webhook_list),
            ("GET", r"/v1/webhook_endpoints/([^/]+)", self.webhook_get),
            ("POST", r"/v1/webhook_endpoints/([^/]+)", self.webhook_update),
            ("DELETE", r"/v1/webhook_endpoints/([^/]+)", self.webhook_delete),
            ("GET", r"/v1/events", self.event_list),
            ("GET", r"/v1/events/([^/]+)", self.event_get),
            ("GET", r"/v1/invoices", self.invoice_list),
            ("GET", r"/v1/invoices/([^/]+)", self.invoice_get),
        ] + self.discount_routes() + self.tax_routes() + self.portal_routes() + self.entitlement_routes() + self.checkout_routes()

    def handle(self, method, path, params):
        for m, pattern, fn in self.routes():
            match = re.fullmatch(pattern, path)
            if m == method and match:
                return fn(params, *match.groups())
        raise ApiError(404, "Unrecognized request URL (%s: %s). Please see https://stripe.com/docs or we can help at "
                       "https://support.stripe.com/." % (method, path))

    @staticmethod
    def out(obj):
        """An object as the API shows it (internal fields dropped)."""
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def _list(self, kind, params, path, pred=lambda o: True, view=None):
        view = view or self.out
        items = sorted((o for o in self.db[kind].values() if pred(o)), key=lambda o: -o["_seq"])
        limit = params.get("limit", 10)
        if not 1 <= limit <= 100:
            raise bad("limit", "Invalid integer: limit must be between 1 and 100")
        if params.get("starting_after"):
            cursor = params["starting_after"]
            if cursor not in self.db[kind]:
                raise bad("starting_after", "No such object: '%s'" % cursor, code="resource_missing")
            seq = self.db[kind][cursor]["_seq"]
            items = [o for o in items if o["_seq"] < seq]
        elif params.get("ending_before"):
            cursor = params["ending_before"]
            if cursor not in self.db[kind]:
                raise bad("ending_before", "No such object: '%s'" % cursor, code="resource_missing")
            seq = self.db[kind][cursor]["_seq"]
            items = [o for o in items if o["_seq"] > seq][-limit:]
        return {"object": "list", "data": [view(o) for o in items[:limit]], "has_more": len(items) > limit,
                "url": path}

    @staticmethod
    def _require(params, *names):
        for name in names:
            if params.get(name) in (None, ""):
                raise bad(name, "Missing required param: %s." % name, code="parameter_missing")

    @staticmethod
    def _metadata(current, update):
        if update is None:
            return current
        if update == {}:
            return {}
        merged = dict(current)
        for k, v in update.items():
            if v == "":
                merged.pop(k, None)
            else:
                merged[k] = str(v)
        return merged

    # --- products
    def product_create(self, p):
        p = coerce(PRODUCT_CREATE, p)
        self._require(p, "name")
        if p.get("id") and p["id"] in self.db["products"]:
            raise bad("id", "Product already exists.", code="resource_already_exists")
        fields = {"active": p.get("active", True), "default_price": None, "description": p.get("description"),
                  "images": p.get("images", []), "marketing_features": p.get("marketing_features", []),
                  "metadata": self._metadata({}, p.get("metadata")), "name": p["name"], "package_dimensions": None,
                  "shippable": p.get("shippable"), "statement_descriptor": p.get("statement_descriptor"),
                  "tax_code": p.get("tax_code"), "unit_label": p.get("unit_label"), "updated": self.now(),
                  "url": p.get("url")}
        obj = self._new("products", fields)
        if p.get("id"):
            del self.db["products"][obj["id"]]
            obj["id"] = p["id"]
            self.db["products"][p["id"]] = obj
        return obj

    def product_get(self, p, oid):
        coerce(EXPAND, p)
        return self._find("products", oid)

    def product_update(self, p, oid):
        p = coerce(PRODUCT_UPDATE, p)
        obj = self._find("products", oid)
        if p.get("default_price"):
            price = self._find("prices", p["default_price"], "default_price")
            if price["product"] != oid:
                raise bad("default_price", "The price must belong to this product.")
        for k, v in p.items():
            if k == "metadata":
                obj["metadata"] = self._metadata(obj["metadata"], v)
            elif k == "name" and not v:
                raise bad("name", "You passed an empty string for 'name'. We assume empty values are an attempt to "
                          "unset a parameter; however 'name' cannot be unset.")
            elif k != "expand":
                obj[k] = v if v != "" else None
        obj["updated"] = self.now()
        return obj

    def product_delete(self, p, oid):
        coerce({}, p)
        self._find("products", oid)
        if any(pr["product"] == oid for pr in self.db["prices"].values()):
            raise bad(None, "This product cannot be deleted because it has one or more user-created prices.")
        del self.db["products"][oid]
        return {"id": oid, "object": "product", "deleted": True}

    def product_list(self, p):
        p = coerce(PRODUCT_LIST, p)
        return self._list("products", p, "/v1/products", lambda o: (
            ("active" not in p or o["active"] == p["active"]) and ("ids" not in p or o["id"] in p["ids"])))

    # --- prices
    def _currency(self, value):
        if value not in CURRENCIES:
            raise bad("currency", "Invalid currency: %s. Stripe currently supports these currencies: %s"
                      % (value, ", ".join(sorted(CURRENCIES))))
        return value

    def _claim_lookup_key(self, key, transfer, price_id=None):
        for other in self.db["prices"].values():
            if other["lookup_key"] == key and other["id"] != price_id:
                if not transfer:
                    raise bad("lookup_key", "A price (`%s`) already uses that lookup key." % other["id"])
                other["lookup_key"] = None

    def price_create(self, p):
        p = coerce(PRICE_CREATE, p)
        self._require(p, "currency")
        currency = self._currency(p["currency"])
        if not p.get("product") and not p.get("product_data"):
            raise bad("product", "Missing required param: product.", code="parameter_missing")
        if p.get("product") and p.get("product_data"):
            raise bad("product_data", "You may only specify one of these parameters: product, product_data.")
        if "unit_amount" in p and "unit_amount_decimal" in p:
            raise bad("unit_amount_decimal", "You may only specify one of these parameters: unit_amount, "
                      "unit_amount_decimal.")
        if "unit_amount" not in p and "unit_amount_decimal" not in p:
            raise bad("unit_amount", "Missing required param: unit_amount.", code="parameter_missing")
        if p.get("unit_amount") is not None and p["unit_amount"] < 0:
            raise bad("unit_amount", "Invalid non-negative integer")
        if "unit_amount_decimal" in p:
            if p["unit_amount_decimal"].startswith("-"):
                raise bad("unit_amount_decimal", "Invalid non-negative decimal")
            dec = _strip_zeros(p["unit_amount_decimal"])
            if "." in dec and len(dec.split(".")[1]) > 12:
                raise bad("unit_amount_decimal", "Invalid decimal: at most 12 decimal places are allowed")
        recurring = p.get("recurring")
        if recurring:
            if "interval" not in recurring:
                raise bad("recurring[interval]", "Missing required param: recurring[interval].",
                          code="parameter_missing")
            usage = recurring.get("usage_type", "licensed")
            if usage == "metered":
                if not recurring.get("meter"):
                    raise bad("recurring[meter]", "Metered prices must be backed by a meter: recurring[meter] is "
                              "required when recurring[usage_type] is metered.")
                if self._find("billing/meters", recurring["meter"], "recurring[meter]")["status"] != "active":
                    raise bad("recurring[meter]", "The meter `%s` is inactive; prices can only be created on active "
                              "meters." % recurring["meter"])
            elif recurring.get("meter"):
                raise bad("recurring[meter]", "recurring[meter] can only be set when recurring[usage_type] is "
                          "metered.")
            recurring = {"interval": recurring["interval"], "interval_count": recurring.get("interval_count", 1),
                         "meter": recurring.get("meter"), "trial_period_days": recurring.get("trial_period_days"),
                         "usage_type": usage}
        if p.get("product"):
            product = self._find("products", p["product"], "product")
            if not product["active"]:
                raise bad("product", "The product `%s` is inactive; prices can only be created on active products."
                          % product["id"])
            product = product["id"]
        else:
            pd = p["product_data"]
            self._require({"product_data[name]": pd.get("name")}, "product_data[name]")
            product = self.product_create({"name": pd["name"], "metadata": pd.get("metadata") or ""})["id"]
        if p.get("lookup_key"):
            self._claim_lookup_key(p["lookup_key"], p.get("transfer_lookup_key", False))
        if "unit_amount" in p:
            amount, decimal = p["unit_amount"], str(p["unit_amount"])
        else:
            decimal = _strip_zeros(p["unit_amount_decimal"])
            amount = int(decimal) if "." not in decimal else None
        return self._new("prices", {
            "active": p.get("active", True), "billing_scheme": "per_unit", "currency": currency,
            "custom_unit_amount": None, "lookup_key": p.get("lookup_key") or None,
            "metadata": self._metadata({}, p.get("metadata")), "nickname": p.get("nickname"), "product": product,
            "recurring": recurring, "tax_behavior": p.get("tax_behavior", "unspecified"), "tiers_mode": None,
            "transform_quantity": None, "type": "recurring" if recurring else "one_time", "unit_amount": amount,
            "unit_amount_decimal": decimal})

    def price_get(self, p, oid):
        coerce(EXPAND, p)
        return self._find("prices", oid)

    def price_update(self, p, oid):
        p = coerce(PRICE_UPDATE, p)
        obj = self._find("prices", oid)
        if "lookup_key" in p:
            if p["lookup_key"]:
                self._claim_lookup_key(p["lookup_key"], p.get("transfer_lookup_key", False), oid)
            obj["lookup_key"] = p["lookup_key"] or None
        for k in ("active", "nickname", "tax_behavior"):
            if k in p:
                obj[k] = p[k] if p[k] != "" else None
        obj["metadata"] = self._metadata(obj["metadata"], p.get("metadata"))
        return obj

    def price_list(self, p):
        p = coerce(PRICE_LIST, p)
        if "lookup_keys" in p and len(p["lookup_keys"]) > 10:
            raise bad("lookup_keys", "You may pass at most 10 lookup keys.")

        def pred(o):
            rec = p.get("recurring") or {}
            return (("active" not in p or o["active"] == p["active"])
                    and ("currency" not in p or o["currency"] == p["currency"])
                    and ("lookup_keys" not in p or o["lookup_key"] in p["lookup_keys"])
                    and ("product" not in p or o["product"] == p["product"])
                    and ("type" not in p or o["type"] == p["type"])
                    and all((o["recurring"] or {}).get(k) == v for k, v in rec.items()))
        return self._list("prices", p, "/v1/prices", pred)

    # --- billing meters
    def meter_create(self, p):
        p = coerce(METER_CREATE, p)
        self._require(p, "display_name", "event_name", "default_aggregation")
        if not (p["default_aggregation"] or {}).get("formula"):
            raise bad("default_aggregation[formula]", "Missing required param: default_aggregation[formula].",
                      code="parameter_missing")
        if any(m["event_name"] == p["event_name"] for m in self.db["billing/meters"].values()):
            raise bad("event_name", "A meter with event_name `%s` already exists." % p["event_name"])
        cm = p.get("customer_mapping") or {}
        if cm and not (cm.get("event_payload_key") and cm.get("type")):
            raise bad("customer_mapping[event_payload_key]", "customer_mapping needs event_payload_key and type.",
                      code="parameter_missing")
        now = self.now()
        return self._new("billing/meters", {
            "customer_mapping": {"event_payload_key": cm.get("event_payload_key", "stripe_customer_id"),
                                 "type": "by_id"},
            "default_aggregation": {"formula": p["default_aggregation"]["formula"]},
            "display_name": p["display_name"], "event_name": p["event_name"],
            "event_time_window": p.get("event_time_window"), "status": "active",
            "status_transitions": {"deactivated_at": None}, "updated": now,
            "value_settings": {"event_payload_key": (p.get("value_settings") or {}).get("event_payload_key", "value")}})

    def meter_event_create(self, p):
        p = coerce(METER_EVENT_CREATE, p)
        self._require(p, "event_name", "payload")
        now = self.now()
        stamp = p.get("timestamp", now)
        if stamp is None or stamp < now - METER_EVENT_WINDOW or stamp > now + 300:
            raise bad("timestamp", "Timestamp must be within the past 35 calendar days and no more than 5 minutes "
                      "in the future.")
        ident = p.get("identifier") or "mev_" + secrets.token_hex(12)
        if len(ident) > 100:
            raise bad("identifier", "Invalid string: identifier must be at most 100 characters")
        if now - self.db["meter_identifiers"].get(ident, -IDENTIFIER_WINDOW) < IDENTIFIER_WINDOW:
            raise ApiError(400, "An event already exists with identifier %s." % ident, param="identifier",
                           headers={"Stripe-Should-Retry": "false"})
        event = {"object": "billing.meter_event", "created": now, "event_name": p["event_name"], "identifier": ident,
                 "livemode": False, "payload": p["payload"], "timestamp": stamp}
        self._take_meter_event(event)
        return event

    def _take_meter_event(self, event):
        """Stripe's asynchronous checks of a meter event: an error report, or the event counts."""
        payload = event["payload"]
        meter = self._meter_named(event["event_name"])
        value = payload.get(meter["value_settings"]["event_payload_key"]) if meter else None
        key = meter["customer_mapping"]["event_payload_key"] if meter else None
        if not meter:
            self._refuse_meter_event(event, "no_meter", "No active meter has the event name %s." % event["event_name"])
        elif not payload.get(key):
            self._refuse_meter_event(event, "meter_event_no_customer_defined",
                                     "Customer mapping key %s not found in payload." % key, meter)
        elif payload[key] not in self.db["customers"]:
            self._refuse_meter_event(event, "meter_event_customer_not_found",
                                     "No customer %s was found." % payload[key], meter)
        elif value is None or not re.fullmatch(r"-?\d+(\.\d+)?", value):
            self._refuse_meter_event(event, "meter_event_invalid_value",
                                     "The value of %s is not a number." % meter["value_settings"]["event_payload_key"],
                                     meter)
        else:
            self.db["meter_events"].append(event)
            self.db["meter_identifiers"][event["identifier"]] = event["created"]

    def meter_summaries(self, p, oid):
        p = coerce(METER_SUMMARIES, p)
        self._require(p, "customer", "start_time", "end_time")
        meter = self._find("billing/meters", oid)
        window = {"hour": 3600, "day": 86400}.get(p.get("value_grouping_window"))
        start, end = p["start_time"], p["end_time"]
        if window and (start % window or end % window):
            raise bad("start_time", "start_time and end_time must be aligned with value_grouping_window.")
        if end <= start:
            raise bad("end_time", "end_time must be after start_time.")
        key = meter["customer_mapping"]["event_payload_key"]
        bounds = [(t, min(t + window, end)) for t in range(start, end, window)] if window else [(start, end)]
        out = []
        for lo, hi in bounds:
            found = sorted((e for e in self.db["meter_events"]
                            if e["event_name"] == meter["event_name"] and e["payload"].get(key) == p["customer"]
                            and lo <= e["timestamp"] < hi), key=lambda e: e["timestamp"])
            values = [float(e["payload"].get(meter["value_settings"]["event_payload_key"], 0)) for e in found]
            formula = meter["default_aggregation"]["formula"]
            if values:
                out.append({"id": "mtrusum_%d" % lo, "object": "billing.meter_event_summary",
                            "aggregated_value": {"sum": sum(values), "count": float(len(values)),
                                                 "last": values[-1]}[formula],
                            "end_time": hi, "livemode": False, "meter": oid, "start_time": lo})
        limit = p.get("limit", 10)
        if p.get("starting_after"):
            out = [o for o in out if o["start_time"] > int(p["starting_after"].split("_")[1])]
        return {"object": "list", "data": out[:limit], "has_more": len(out) > limit,
                "url": "/v1/billing/meters/%s/event_summaries" % oid}

    def meter_get(self, p, oid):
        coerce(EXPAND, p)
        return self._find("billing/meters", oid)

    def meter_update(self, p, oid):
        p = coerce(METER_UPDATE, p)
        obj = self._find("billing/meters", oid)
        if "display_name" in p:
            if not p["display_name"]:
                raise bad("display_name", "display_name cannot be empty.")
            obj["display_name"] = p["display_name"]
            obj["updated"] = self.now()
        return obj

    def meter_status(self, p, oid, action):
        coerce(EXPAND, p)
        obj = self._find("billing/meters", oid)
        want = "inactive" if action == "deactivate" else "active"
        if obj["status"] == want:
            raise bad(None, "This meter is already %s." % want)
        now = self.now()
        obj["status"], obj["updated"] = want, now
        obj["status_transitions"] = {"deactivated_at": now if want == "inactive" else None}
        return obj

    def meter_list(self, p):
        p = coerce(METER_LIST, p)
        return self._list("billing/meters", p, "/v1/billing/meters",
                          lambda o: "status" not in p or o["status"] == p["status"])

    # --- customers
    def _customer_fields(self, p, obj):
        for k, v in p.items():
            if k == "metadata":
                obj["metadata"] = self._metadata(obj.get("metadata", {}), v)
            elif k == "address" and v:  # a line sent empty is cleared: Stripe shows null
                obj[k] = {line: v.get(line) or None for line in ADDRESS}
            elif k not in ("expand", "tax", "tax_id_data"):
                obj[k] = v if v != "" else None
        return obj

    def customer_create(self, p):
        self.check_customer_tax(p, {})
        raw = p
        p = coerce(CUSTOMER_CREATE, p)
        base = {"address": None, "balance": 0, "currency": None, "default_source": None, "delinquent": False,
                "description": None, "email": None, "invoice_prefix": secrets.token_hex(4).upper(),
                "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                                     "rendering_options": None},
                "metadata": {}, "name": None, "phone": None, "preferred_locales": [], "shipping": None,
                "tax_exempt": "none", "test_clock": None}
        customer = self._new("customers", self._customer_fields(p, base))
        self._emit("customer.created", self.out(customer))
        self.customer_tax_ids_created(customer, raw)
        return customer

    def customer_get(self, p, oid):
        p = coerce(EXPAND, p)
        obj = self._find("customers", oid)
        if obj.get("_deleted"):
            return {"id": oid, "object": "customer", "deleted": True}
        obj = json.loads(json.dumps(self.out(obj)))
        for path in p.get("expand") or []:
            if path == "tax":
                obj["tax"] = self.customer_tax(obj)
                continue
            if path == "tax_ids":
                obj["tax_ids"] = self.customer_tax_ids(oid)
                continue
            if path != "invoice_settings.default_payment_method":
                raise bad("expand", "This property cannot be expanded (%s)." % path)
            pm = obj["invoice_settings"]["default_payment_method"]
            obj["invoice_settings"]["default_payment_method"] = self.out(self.db["payment_methods"][pm]) if pm else None
        return obj

    def customer_update(self, p, oid):
        raw = p
        p = coerce(CUSTOMER_FIELDS, p)
        obj = self._find("customers", oid)
        if obj.get("_deleted"):
            raise ApiError(404, "No such customer: '%s'" % oid, param="id", code="resource_missing")
        self.check_customer_tax(raw, obj)
        self._customer_fields(p, obj)
        self._emit("customer.updated", self.out(obj))
        return obj

    def customer_delete(self, p, oid):
        coerce({}, p)
        obj = self._find("customers", oid)
        if obj.get("_deleted"):
            raise ApiError(404, "No such customer: '%s'" % oid, param="id", code="resource_missing")
        obj["_deleted"] = True
        for sub in self.db["subscriptions"].values():
            if sub["customer"] == oid and sub["status"] not in ("canceled", "incomplete_expired"):
                self._cancel(sub)
                self._emit("customer.subscription.deleted", self._sub_view(sub))
        self._emit("customer.deleted", self.out(obj))
        return {"id": oid, "object": "customer", "deleted": True}

    def customer_list(self, p):
        p = coerce(CUSTOMER_LIST, p)
        return self._list("customers", p, "/v1/customers", lambda o: not o.get("_deleted") and (
            "email" not in p or o["email"] == p["email"]))

    _CLAUSE = re.compile(r"""^\s*(?:metadata\[(['"])(?P<mk>[^'"]+)\1\]|(?P<field>email|name|phone|description))\s*"""
                         r"""(?P<op>:|~)\s*(['"])(?P<val>(?:[^'"\\]|\\.)*)\5\s*$""")

    def customer_search(self, p):
        p = coerce(CUSTOMER_SEARCH, p)
        self._require(p, "query")
        tests = []
        for clause in re.split(r"\s+AND\s+", p["query"]):
            m = self._CLAUSE.match(clause)
            if not m:
                raise bad("query", "Invalid query: %s" % p["query"])
            val = re.sub(r"\\(.)", r"\1", m.group("val"))
            if m.group("mk"):
                tests.append(lambda o, k=m.group("mk"), v=val: o["metadata"].get(k) == v)
            elif m.group("op") == "~":
                tests.append(lambda o, f=m.group("field"), v=val: v.lower() in (o.get(f) or "").lower())
            else:
                tests.append(lambda o, f=m.group("field"), v=val: (o.get(f) or "") == v)
        items = sorted((o for o in self.db["customers"].values()
                        if not o.get("_deleted") and all(t(o) for t in tests)), key=lambda o: -o["_seq"])
        limit = p.get("limit", 10)
        start = int(p.get("page") or 0)
        page = items[start:start + limit]
        more = len(items) > start + limit
        return {"object": "search_result", "data": [self.out(o) for o in page], "has_more": more,
                "next_page": str(start + limit) if more else None, "url": "/v1/customers/search"}

    # --- subscriptions
    def _period_end(self, start, recurring):
        days = {"day": 1, "week": 7, "month": 30, "year": 365}[recurring["interval"]]
        return start + days * 86400 * recurring["interval_count"]

    def _item(self, sub_id, price, quantity, metadata, start, end):
        si = self._new("subscription_items", {
            "current_period_end": end, "current_period_start": start, "discounts": [], "metadata": metadata or {},
            "price": self.out(price), "subscription": sub_id, "tax_rates": []})
        if price["recurring"]["usage_type"] == "licensed":
            si["quantity"] = quantity if quantity is not None else 1
        return si

    def _sub_view(self, sub):
        out = self.out(sub)
        items = [self.out(self.db["subscription_items"][i]) for i in sub["_items"]]
        out["items"] = {"object": "list", "data": items, "has_more": False, "total_count": len(items),
                        "url": "/v1/subscription_items?subscription=%s" % sub["id"]}
        return out

    def _recurring_price(self, pid, param):
        price = self._find("prices", pid, param)
        if not price["recurring"]:
            raise bad(param, "The price specified is set to `type=one_time` but this field only accepts prices with "
                      "`type=recurring`.")
        if not price["active"]:
            raise bad(param, "The price specified is inactive. This field only accepts active prices.")
        return price

    def sub_create(self, p):
        raw = p
        p = coerce(SUB_CREATE, p)
        self._require(p, "customer")
        customer = self._find("customers", p["customer"], "customer")
        if customer.get("_deleted"):
            raise bad("customer", "No such customer: '%s'" % p["customer"], code="resource_missing")
        tax = self.automatic_tax(raw, customer) or {"enabled": False, "liability": None, "disabled_reason": None}
        if not p.get("items"):
            raise bad("items", "Missing required param: items.", code="parameter_missing")
        prices = []
        for i, item in enumerate(p["items"]):
            if not item.get("price"):
                raise bad("items[%d][price]" % i, "Missing required param: items[%d][price]." % i,
                          code="parameter_missing")
            prices.append(self._recurring_price(item["price"], "items[%d][price]" % i))
        if len({pr["currency"] for pr in prices}) > 1:
            raise bad("items", "All prices on a subscription must have the same currency.")
        if len({pr["id"] for pr in prices}) < len(prices):
            raise bad("items", "Cannot add multiple subscription items with the same price.")
        now = self.now()
        trial_end = None
        if p.get("trial_period_days"):
            if p["trial_period_days"] < 0 or p["trial_period_days"] > 730:
                raise bad("trial_period_days", "trial_period_days must be between 0 and 730.")
            trial_end = now + p["trial_period_days"] * 86400
        elif p.get("trial_end"):
            trial_end = p["trial_end"]
        collection = p.get("collection_method", "charge_automatically")
        self._check_days_until_due(p, collection)
        behavior = p.get("payment_behavior", "allow_incomplete")
        if behavior == "pending_if_incomplete":
            raise bad("payment_behavior", "payment_behavior=pending_if_incomplete can only be used when updating a "
                      "subscription.")
        method = p.get("default_payment_method") or customer["invoice_settings"]["default_payment_method"]
        pays = bool(method or customer.get("default_source"))
        declined = bool(method and self.db["payment_methods"].get(method, {}).get("_declines"))
        due = sum(pr["unit_amount"] or 0 for pr in prices if pr["recurring"]["usage_type"] == "licensed") > 0
        if trial_end:
            status = "trialing"
        elif collection == "send_invoice" or not due:
            status = "active"
        elif behavior == "default_incomplete" or not pays or declined:
            if behavior == "error_if_incomplete" and not pays:
                raise ApiError(402, "This customer has no attached payment source or default payment method. "
                               "Please consider adding a default payment method.", code="resource_missing",
                               type_="invalid_request_error")
            if behavior == "error_if_incomplete":
                raise ApiError(402, "Your card was declined.", code="card_declined", type_="card_error")
            status = "incomplete"
        else:
            status = "active"
        sub = self._new("subscriptions", {
            "automatic_tax": tax, "billing_cycle_anchor": trial_end or now,
            "cancel_at": None, "cancel_at_period_end": p.get("cancel_at_period_end", False), "canceled_at": None,
            "collection_method": collection, "currency": prices[0]["currency"],
            "customer": customer["id"], "days_until_due": p.get("days_until_due"),
            "default_payment_method": p.get("default_payment_method"), "description": p.get("description"),
            "ended_at": None, "latest_invoice": None, "metadata": self._metadata({}, p.get("metadata")),
            "discounts": [], "pending_update": None, "start_date": now, "status": status,
            "trial_end": trial_end, "trial_start": now if trial_end else None, "schedule": None, "_items": []})
        for item, price in zip(p["items"], prices):
            end = trial_end or self._period_end(now, price["recurring"])
            sub["_items"].append(self._item(sub["id"], price, item.get("quantity"), item.get("metadata"), now, end)["id"])
        if p.get("discounts"):
            self.apply_discounts(sub, p["discounts"], self._first_amount(sub))
        self._emit("customer.subscription.created", self._sub_view(sub))
        if status == "incomplete":  # its first invoice waits to be paid
            self._open_invoice(sub, "subscription_create")
        return self.expand_discounts(self._sub_view(sub), p.get("expand") or [])

    @staticmethod
    def _check_days_until_due(p, collection):
        if p.get("days_until_due") is not None and collection != "send_invoice":
            raise bad("days_until_due", "days_until_due can only be set when collection_method is send_invoice.")
        if collection == "send_invoice" and p.get("days_until_due") is None and "collection_method" in p:
            raise bad("days_until_due", "Missing required param: days_until_due.", code="parameter_missing")

    def sub_get(self, p, oid):
        p = coerce(EXPAND, p)
        return self.expand_discounts(self._sub_view(self._find("subscriptions", oid)), p.get("expand") or [])

    def sub_update(self, p, oid):
        raw = p
        p = coerce(SUB_UPDATE, p)
        sub = self._find("subscriptions", oid)
        before = self._sub_view(sub)
        if sub["status"] in ("canceled", "incomplete_expired") and set(p) - {"metadata", "expand"}:
            raise bad(None, "A canceled subscription can only update its cancellation_details and metadata.")
        if sub["status"] == "incomplete" and set(p) - {"metadata", "default_source", "expand"}:
            raise bad(sorted(set(p) - {"metadata", "default_source", "expand"})[0],
                      "An incomplete subscription can only update its metadata and default_source.")
        tax = self.automatic_tax(raw, self.db["customers"][sub["customer"]])
        collection = p.get("collection_method", sub["collection_method"])
        if p.get("days_until_due") is not None and collection != "send_invoice":
            raise bad("days_until_due", "days_until_due can only be set when collection_method is send_invoice.")
        if collection == "send_invoice" and p.get("days_until_due", sub["days_until_due"]) is None:
            raise bad("days_until_due", "Missing required param: days_until_due.", code="parameter_missing")
        if collection != "send_invoice" and "collection_method" in p:
            sub["days_until_due"] = None
        items = list(sub["_items"])
        for i, item in enumerate(p.get("items") or []):
            name = "items[%d]" % i
            if item.get("id"):
                if item["id"] not in items:
                    raise bad(name + "[id]", "No such subscription item: '%s'" % item["id"], code="resource_missing")
                si = self.db["subscription_items"][item["id"]]
                if item.get("deleted"):
                    items.remove(item["id"])
                    continue
                if item.get("price"):
                    si["price"] = self.out(self._recurring_price(item["price"], name + "[price]"))
                if "quantity" in item:
                    si["quantity"] = item["quantity"]
                si["metadata"] = self._metadata(si["metadata"], item.get("metadata"))
            else:
                if not item.get("price"):
                    raise bad(name + "[price]", "Missing required param: %s[price]." % name, code="parameter_missing")
                price = self._recurring_price(item["price"], name + "[price]")
                first = self.db["subscription_items"][items[0]] if items else None
                start = first["current_period_start"] if first else self.now()
                end = first["current_period_end"] if first else self._period_end(start, price["recurring"])
                items.append(self._item(oid, price, item.get("quantity"), item.get("metadata"), start, end)["id"])
        if not items:
            raise bad("items", "A subscription must have at least one item.")
        prices = [self.db["subscription_items"][i]["price"] for i in items]
        if len({pr["id"] for pr in prices}) < len(prices):
            raise bad("items", "Cannot add multiple subscription items with the same price.")
        if len({pr["currency"] for pr in prices}) > 1 or prices[0]["currency"] != sub["currency"]:
            raise bad("items", "The currency of a subscription cannot be changed: its prices must be in %s."
                      % sub["currency"])
        sub["_items"] = items
        if tax is not None:
            sub["automatic_tax"] = tax
        for k in ("cancel_at_period_end", "description", "default_payment_method", "collection_method",
                  "days_until_due"):
            if k in p:
                sub[k] = p[k] if p[k] != "" else None
        if p.get("trial_end") == "now" and sub["status"] == "trialing":
            now = self.now()
            sub["trial_end"], sub["status"] = now, "active"
            for i in items:
                si = self.db["subscription_items"][i]
                si["current_period_start"] = now
                si["current_period_end"] = self._period_end(now, si["price"]["recurring"])
        elif p.get("trial_end") not in (None, "now"):
            raise bad("trial_end", "trial_end must be 'now' in this fake.")
        if "discounts" in p:
            self.apply_discounts(sub, p["discounts"], self._first_amount(sub))
        sub["metadata"] = self._metadata(sub["metadata"], p.get("metadata"))
        self._emit("customer.subscription.updated", self._sub_view(sub), before)
        return self.expand_discounts(self._sub_view(sub), p.get("expand") or [])

    def _first_amount(self, sub):
        """What the subscription's licensed items cost a period, before discounts."""
        items = [self.db["subscription_items"][i] for i in sub["_items"]]
        return sum((si["price"]["unit_amount"] or 0) * si.get("quantity", 1) for si in items
                   if si["price"]["recurring"]["usage_type"] == "licensed")

    def _cancel(self, sub):
        now = self.now()
        sub.update(status="canceled", canceled_at=now, ended_at=now)

    def sub_cancel(self, p, oid):
        p = coerce(SUB_CANCEL, p)
        sub = self._find("subscriptions", oid)
        if sub["status"] == "canceled":
            raise ApiError(404, "No such subscription: '%s'" % oid, param="id", code="resource_missing")
        self._cancel(sub)
        # what the final invoice would hold: metered usage is billed only with invoice_now
        sub["_final_invoice"] = {"invoice_now": p.get("invoice_now", False), "prorate": p.get("prorate", False)}
        self._emit("customer.subscription.deleted", self._sub_view(sub))
        return self._sub_view(sub)

    def sub_list(self, p):
        p = coerce(SUB_LIST, p)
        status = p.get("status")

        def pred(o):
            if status is None:  # every status but canceled, as Stripe lists by default
                ok = o["status"] != "canceled"
            elif status == "ended":
                ok = o["status"] in ("canceled", "incomplete_expired")
            else:
                ok = status == "all" or o["status"] == status
            return ok and ("customer" not in p or o["customer"] == p["customer"]) and (
                "price" not in p or any(self.db["subscription_items"][i]["price"]["id"] == p["price"]
                                        for i in o["_items"]))
        return self._list("subscriptions", p, "/v1/subscriptions", pred,
                          view=lambda o: self.expand_discounts(self._sub_view(o), p.get("expand") or []))

    # --- webhook endpoints
    def _webhook_fields(self, p):
        if "url" in p:
            u = urllib.parse.urlsplit(p["url"] or "")
            if u.scheme not in ("http", "https") or not u.netloc:
                raise bad("url", "Invalid URL: %s" % p["url"])
        if "enabled_events" in p and not p["enabled_events"]:
            raise bad("enabled_events", "enabled_events cannot be empty.")

    def webhook_create(self, p):
        p = coerce(WEBHOOK_CREATE, p)
        self._require(p, "url", "enabled_events")
        self._webhook_fields(p)
        if len(self.db["webhook_endpoints"]) >= WEBHOOK_LIMIT:
            raise bad("url", "You have reached the maximum of %d test webhook endpoints." % WEBHOOK_LIMIT)
        return self._new("webhook_endpoints", {
            "api_version": p.get("api_version"), "application": None, "description": p.get("description") or None,
            "enabled_events": p["enabled_events"], "metadata": self._metadata({}, p.get("metadata")),
            "status": "enabled", "url": p["url"], "_secret": "whsec_" + secrets.token_hex(16)})

    @staticmethod
    def _webhook_view(obj, create=False):
        out = FakeStripe.out(obj)
        if create:
            out["secret"] = obj["_secret"]
        return out

    def webhook_get(self, p, oid):
        coerce(EXPAND, p)
        return self._find("webhook_endpoints", oid)

    def webhook_update(self, p, oid):
        p = coerce(WEBHOOK_UPDATE, p)
        obj = self._find("webhook_endpoints", oid)
        self._webhook_fields(p)
        for k, v in p.items():
            if k == "metadata":
                obj["metadata"] = self._metadata(obj["metadata"], v)
            elif k == "disabled":
                obj["status"] = "disabled" if v else "enabled"
            elif k != "expand":
                obj[k] = v if v != "" else None
        return obj

    def webhook_delete(self, p, oid):
        coerce({}, p)
        self._find("webhook_endpoints", oid)
        del self.db["webhook_endpoints"][oid]
        return {"id": oid, "object": "webhook_endpoint", "deleted": True}

    def webhook_list(self, p):
        p = coerce(LIST, p)
        return self._list("webhook_endpoints", p, "/v1/webhook_endpoints")

    # --- the v2 meter event stream
    def v2(self, method, path, token, doc):
        def err(status, code, message, type_="invalid_request_error"):
            return status, {"error": {"type": type_, "code": code, "message": message}}
        with self.lock:
            now = self.now()
            if method == "POST" and path == "/v2/billing/meter_event_session":
                if token != self.api_key and (self._strict_key or not re.match(r"^(sk|rk)_", token)):
                    return err(401, "unauthorized", "Invalid API Key provided")
                if doc:
                    return err(400, "invalid_parameter", "Received unknown parameters: %s" % ", ".join(doc))
                sid = "mes_" + secrets.token_hex(12)
                session = {"id": sid, "object": "v2.billing.meter_event_session",
                           "authentication_token": "ek_test_" + secrets.token_hex(20), "livemode": False,
                           "created": _iso(now), "expires_at": _iso(now + 900)}
                self.db.setdefault("meter_event_sessions", {})[session["authentication_token"]] = dict(
                    session, _expires=now + 900)
                return 200, session
            if method == "POST" and path == "/v2/billing/meter_event_stream":
                session = self.db.get("meter_event_sessions", {}).get(token)
                if session is None:
                    return err(401, "unauthorized", "Invalid meter event session token")
                if session["_expires"] <= now:
                    return err(401, "billing_meter_event_session_expired", "The meter event session has expired",
                               "temporary_session_expired")
                events = doc.get("events")
                if set(doc) != {"events"} or not isinstance(events, list) or not 1 <= len(events) <= 100:
                    return err(400, "invalid_parameter", "events: a list of 1 to 100 meter events")
                for i, e in enumerate(events):
                    if not isinstance(e, dict) or set(e) - {"event_name", "identifier", "payload", "timestamp"} or \
                            not isinstance(e.get("event_name"), str) or not isinstance(e.get("payload"), dict) or \
                            not all(isinstance(v, str) for v in e["payload"].values()) or \
                            not isinstance(e.get("identifier", ""), str) or len(e.get("identifier", "")) > 100:
                        return err(400, "invalid_parameter", "events[%d]: event_name, payload (strings), "
                                   "identifier (at most 100 characters), timestamp" % i)
                for e in events:  # processed later at Stripe; at once here
                    stamp = _epoch(e["timestamp"]) if "timestamp" in e else now
                    ident = e.get("identifier") or "mev_" + secrets.token_hex(12)
                    if now - self.db["meter_identifiers"].get(ident, -IDENTIFIER_WINDOW) < IDENTIFIER_WINDOW:
                        continue
                    event = {"object": "billing.meter_event", "created": now, "event_name": e["event_name"],
                             "identifier": ident, "livemode": False, "payload": e["payload"], "timestamp": stamp}
                    if stamp is not None and stamp > now + 300:
                        self._refuse_meter_event(event, "timestamp_in_future", "Timestamp is too far in the future.",
                                                 self._meter_named(e["event_name"]))
                    elif stamp is None or stamp < now - METER_EVENT_WINDOW:
                        self._refuse_meter_event(event, "timestamp_too_far_in_past",
                                                 "Timestamp must be within the past 35 calendar days.",
                                                 self._meter_named(e["event_name"]))
                    else:
                        self._take_meter_event(event)
                self._save()
                return 200, {}
            if method == "GET" and path == "/v2/core/events":
                if token != self.api_key and (self._strict_key or not re.match(r"^(sk|rk)_", token)):
                    return err(401, "unauthorized", "Invalid API Key provided")
                return self._v2_event_list(doc, now, err)
            return err(404, "not_found", "Unrecognized request URL (%s: %s)" % (method, path))

    def _meter_named(self, event_name):
        return next((m for m in self.db["billing/meters"].values()
                     if m["event_name"] == event_name and m["status"] == "active"), None)

    def _refuse_meter_event(self, event, code, message, meter=None):
        """Stripe's asynchronous refusal of a meter event: a meter error report, a v2 event (one per refusal
        here; Stripe groups a window's), v1.billing.meter.no_meter_found when no meter has the event name."""
        self.meter_errors.append(dict(event, error=code))
        now = self.now()
        self.db["v2_events"].append({
            "id": "evt_test_" + secrets.token_hex(16), "object": "v2.core.event", "context": None,
            "created": _iso(now), "livemode": False, "reason": None,
            "type": "v1.billing.meter.error_report_triggered" if meter else "v1.billing.meter.no_meter_found",
            "data": {"developer_message_summary": "There is 1 invalid event",
                     "reason": {"error_count": 1, "error_types": [{
                         "code": code, "error_count": 1,
                         "sample_errors": [{"error_message": message,
                                            "request": {"identifier": event["identifier"]}}]}]},
                     "validation_start": _iso(now - 10), "validation_end": _iso(now)},
            **({"related_object": {"id": meter["id"], "type": "billing.meter",
                                   "url": "/v1/billing/meters/%s" % meter["id"]}} if meter else {})})

    def _v2_event_list(self, q, now, err):
        """GET /v2/core/events as the SDK's EventListParams type it: types (at most 20), created (gt, gte, lt,
        lte: RFC 3339), limit, object_id; the last 30 days, newest first; next_page_url carries the filters."""
        offset = 0
        if "page" in q:
            try:
                q = json.loads(urllib.parse.unquote(q.pop("page")))
                offset = q.pop("_offset")
            except (ValueError, KeyError):
                return err(400, "invalid_parameter", "page: not a page token")
        known = re.compile(r"^(types\[\d+\]|created\[(gt|gte|lt|lte)\]|limit|object_id)$")
        unknown = sorted(k for k in q if not known.match(k))
        if unknown:
            return err(400, "invalid_parameter", "Received unknown parameter: %s" % unknown[0])
        types = [v for k, v in sorted(q.items()) if k.startswith("types[")]
        if len(types) > 20:
            return err(400, "invalid_parameter", "types: at most 20 event types")
        bounds = {}
        for k, v in q.items():
            if k.startswith("created["):
                bounds[k[8:-1]] = _epoch(v)
                if bounds[k[8:-1]] is None:
                    return err(400, "invalid_parameter", "%s: not an RFC 3339 timestamp" % k)
        try:
            limit = int(q.get("limit", 20))
        except ValueError:
            return err(400, "invalid_parameter", "limit: an integer")
        if not 1 <= limit <= 100:
            return err(400, "invalid_parameter", "limit: 1 to 100")
        found = [e for e in reversed(self.db["v2_events"])
                 if _epoch(e["created"]) >= now - EVENT_DAYS * 86400 and (not types or e["type"] in types)
                 and (q.get("object_id") is None or (e.get("related_object") or {}).get("id") == q["object_id"])
                 and all(RANGE[op](_epoch(e["created"]), at) for op, at in bounds.items())]
        page = found[offset:offset + limit]
        more = offset + limit < len(found)
        token = urllib.parse.quote(json.dumps(dict(q, _offset=offset + limit), sort_keys=True))
        return 200, {"data": page, "next_page_url": "/v2/core/events?page=%s" % token if more else None,
                     "previous_page_url": None}

    # --- events and invoices (read only: Stripe creates them)
    def event_list(self, p):
        p = coerce(EVENT_LIST, p)
        created = p.get("created") or {}
        if "type" in p and "types" in p:
            raise bad("types", "You may only specify one of these parameters: type, types.")
        types = set(p.get("types") or []) | ({p["type"]} if p.get("type") else set())
        oldest = self.now() - EVENT_DAYS * 86400
        if any("*" in t for t in types) and p.get("types"):
            raise bad("types", "Wildcards are only allowed in the type parameter.")

        def pred(o):
            return o["created"] >= oldest and all(RANGE[k](o["created"], v) for k, v in created.items()) and (
                not types or any(o["type"] == t or (t.endswith(".*") and o["type"].startswith(t[:-1]))
                                 for t in types))
        return self._list("events", p, "/v1/events", pred)

    def event_get(self, p, oid):
        coerce(EXPAND, p)
        event = self._find("events", oid)
        if event["created"] < self.now() - EVENT_DAYS * 86400:
            raise ApiError(404, "No such event: '%s'" % oid, param="id", code="resource_missing")
        return event

    def invoice_list(self, p):
        p = coerce(INVOICE_LIST, p)
        return self._list("invoices", p, "/v1/invoices", lambda o: all(
            o.get(k) == p[k] for k in ("customer", "status") if k in p) and (
            "subscription" not in p or o["parent"]["subscription_details"]["subscription"] == p["subscription"]))

    def invoice_get(self, p, oid):
        coerce(EXPAND, p)
        return self._find("invoices", oid)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeStripe = None
    protocol_version = "HTTP/1.0"  # one request per connection keeps dropped connections simple

    def log_message(self, *args):
        pass

    def _reply(self, status, body, headers=None):
        data = json.dumps(body, indent=2).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", "req_" + secrets.token_hex(7))
        self.send_header("Stripe-Version", self.headers.get("Stripe-Version") or API_VERSION)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test); nothing to answer

    def _drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def _handle(self, method):
        fake = self.fake
        url = urllib.parse.urlsplit(self.path)
        path = url.path.rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        if path.startswith("/v2/"):  # v2: JSON bodies, its own authentication
            return self._handle_v2(method, path, body, url.query)
        if path.startswith("/_fake/"):  # the fake's own controls, not Stripe's API
            return self._handle_control(method, path)
        raw = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        if method == "POST":
            raw += urllib.parse.parse_qsl(body, keep_blank_values=True)
        key = self.headers.get("Idempotency-Key") if method == "POST" else None
        entry = Logged(method, path, dict(raw), key, stripe_version=self.headers.get("Stripe-Version"))
        with fake.lock:
            fake.requests.append(entry)
        fault = fake._take_fault(method, path)
        if fault and fault.delay:
            time.sleep(fault.delay)
        if fault and not fault.after_store and (fault.drop or fault.status):
            entry.fault = "drop" if fault.drop else str(fault.status)
            if fault.drop:
                return self._drop()
            headers = {"Stripe-Should-Retry": fault.should_retry} if fault.should_retry else {}
            err = ApiError(fault.status, "Injected fault", type_="rate_limit_error" if fault.status == 429 else
                           "api_error", code="rate_limit" if fault.status == 429 else None)
            entry.status = fault.status
            if fault.status == 500 and key:
                # the request executed and failed: Stripe stores the 500 under the key and replays it
                headers.setdefault("Stripe-Should-Retry", "false")
                with fake.lock:
                    if key in fake.idem:
                        return self._execute(method, path, raw, key, entry)
                    fake.idem[key] = {"fingerprint": fake.fingerprint(method, path, raw), "status": 500,
                                      "body": err.body(), "headers": {"Stripe-Should-Retry": "false"},
                                      "at": fake.now()}
                    fake._save()
            return self._reply(fault.status, err.body(), headers)
        status, resp, headers = self._execute(method, path, raw, key, entry)
        entry.status = status
        if fault and fault.after_store:  # after_store: the write happened, the answer is lost
            entry.fault = "drop-after-store" if fault.drop else "%d-after-store" % fault.status
            if fault.drop:
                return self._drop()
            entry.status = fault.status
            return self._reply(fault.status, ApiError(fault.status, "Injected fault after store",
                                                      type_="api_error").body())
        return self._reply(status, resp, headers)

    def _handle_control(self, method, path):
        """What a customer does on Stripe's pages, for tests that reach the fake over HTTP only (the scenarios,
        the demo): POST /_fake/checkout/sessions/<id>/complete completes a Checkout session."""
        match = re.fullmatch(r"/_fake/checkout/sessions/([^/]+)/complete", path)
        if method != "POST" or not match:
            return self._reply(404, ApiError(404, "No such control: %s %s" % (method, path)).body())
        try:
            return self._reply(200, self.fake.complete_checkout(match.group(1)))
        except ApiError as e:
            return self._reply(e.status, e.body())
        except ValueError as e:
            return self._reply(409, ApiError(409, str(e)).body())

    def _handle_v2(self, method, path, body, query=""):
        """The v2 meter event stream: a session (15 minutes) from the secret key, then batches of at most 100 events
        authenticated with the session's token, answered before they are processed (validation is asynchronous:
        refused events become meter error reports; a known identifier is dropped)."""
        fake = self.fake
        token = (self.headers.get("Authorization") or "")[7:]
        entry = Logged(method, path, {}, None, stripe_version=self.headers.get("Stripe-Version"))
        with fake.lock:
            fake.requests.append(entry)
        fault = fake._take_fault(method, path)
        if fault and (fault.drop or fault.status):
            entry.fault = "drop" if fault.drop else str(fault.status)
            return self._drop() if fault.drop else self._reply(fault.status, {"error": {"type": "api_error"}})
        try:
            doc = json.loads(body or "{}") if method != "GET" else dict(urllib.parse.parse_qsl(query))
        except ValueError:
            return self._reply(400, {"error": {"type": "invalid_request_error", "message": "Invalid JSON body"}})
        status, resp = fake.v2(method, path, token, doc)
        entry.status, entry.params = status, doc
        return self._reply(status, resp)

    def _execute(self, method, path, raw, key, entry):
        fake = self.fake
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        if not token or (fake._strict_key and token != fake.api_key) or not re.match(r"^(sk|rk)_", token):
            shown = (token[:8] + "*" * 4 + token[-4:]) if len(token) > 12 else "****"
            err = ApiError(401, "Invalid API Key provided: %s" % shown if token else
                           "You did not provide an API key. You need to provide your API key in the Authorization "
                           "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').")
            return 401, err.body(), {}
        with fake.lock:
            fingerprint = fake.fingerprint(method, path, raw)
            if key and key in fake.idem and fake.now() - fake.idem[key]["at"] >= IDENTIFIER_WINDOW:
                del fake.idem[key]  # Stripe prunes keys after 24 hours: the request executes again
            if key and key in fake.idem:
                stored = fake.idem[key]
                if stored["fingerprint"] != fingerprint:
                    err = ApiError(400, "Keys for idempotent requests can only be used with the same parameters they "
                                   "were first used with. Try using a key other than '%s' if you meant to execute a "
                                   "different request." % key, type_="idempotency_error")
                    return 400, err.body(), {}
                entry.replayed = True
                return stored["status"], stored["body"], dict(stored.get("headers") or {}, **{
                    "Idempotent-Replayed": "true", "Idempotency-Key": key})
            try:
                form = parse_form(raw)
                sdk = stripe_sdk_params.params_class(method, path)
                if sdk is not None:
                    try:
                        stripe_sdk_params.validate(sdk, form)
                    except stripe_sdk_params.ParamError as e:
                        raise bad(e.param, e.message, code=e.code)
                result = fake.handle(method, path, form)
                if isinstance(result, dict) and result.get("object") == "webhook_endpoint" and "_secret" in result:
                    result = fake._webhook_view(result, create=method == "POST" and path == "/v1/webhook_endpoints")
                elif isinstance(result, dict):
                    result = fake.out(result)
                status, body = 200, result
            except ApiError as err:
                # the request executed and failed (a card declined: 402): Stripe keeps that answer under the key
                if key and method != "GET" and err.status == 402:
                    fake.idem[key] = {"fingerprint": fingerprint, "status": err.status, "body": err.body(),
                                      "headers": err.headers, "at": fake.now()}
                    fake._save()
                return err.status, err.body(), err.headers
            if method != "GET":
                if key:
                    fake.idem[key] = {"fingerprint": fingerprint, "status": status, "body": body, "at": fake.now()}
                fake._save()
            return status, body, ({"Idempotency-Key": key} if key else {})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--state-file", help="JSON file the state is kept in (loaded at start, written on every write)")
    parser.add_argument("--api-key", help="only accept this secret key (default: any sk_/rk_ key)")
    args = parser.parse_args()
    fake = FakeStripe(port=args.port, host=args.host, state_file=args.state_file, api_key=args.api_key).start()
    print("fake Stripe listening on %s" % fake.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        fake.stop()


if __name__ == "__main__":
    main()
