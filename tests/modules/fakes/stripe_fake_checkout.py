"""Checkout sessions and Customer Portal sessions of the Stripe fake (mixed into FakeStripe), and what a customer
does on those pages (``complete_checkout``).

State rules, besides the SDK's typed parameters (checked before these run), at the pinned API version (the SDK's
own descriptions of each parameter):
- Checkout: ``mode`` is payment, setup or subscription; ``line_items`` are required in payment and subscription
  mode (each an existing active price, with a quantity unless it is metered; subscription mode needs one recurring price or more, at
  most 20) and refused in setup mode; setup mode needs ``currency`` unless ``allowed_payment_method_types`` is
  set; ``customer`` is an existing customer, and ``customer_email`` is not given with it; ``customer_creation`` is
  for payment and setup mode only, ``payment_method_collection`` and ``subscription_data`` for subscription mode
  only; the hosted page (``ui_mode`` hosted_page, the default) needs ``success_url``, which the embedded page and
  elements refuse, as they refuse ``cancel_url``; ``client_reference_id`` has at most 200 characters; a session
  expires 30 minutes to 24 hours after its creation (24 hours by default);
- a completed subscription session creates the subscription (``subscription_data.metadata`` on it) for its
  customer, and Stripe sends ``checkout.session.completed``;
- a portal session needs an existing ``customer``; without ``configuration`` the account's default configuration
  is used, and there is none until one is saved in the Dashboard; a named configuration must exist and be active.
"""

from __future__ import annotations

try:
    from fakes.stripe_fake_portal import _items
except ImportError:  # standalone (the demo, the scenarios): this file's directory is on sys.path
    from stripe_fake_portal import _items

MAX_REFERENCE = 200
MAX_SUBSCRIPTION_ITEMS = 20


class CheckoutMixin:
    """Routes and rules for /v1/checkout/sessions and /v1/billing_portal/sessions."""

    def checkout_routes(self):
        return [
            ("POST", r"/v1/checkout/sessions", self.checkout_create),
            ("GET", r"/v1/checkout/sessions/([^/]+)", self.checkout_get),
            ("POST", r"/v1/billing_portal/sessions", self.portal_session_create),
        ]

    def _session_customer(self, p):
        if not p.get("customer"):
            return None
        customer = self._find("customers", p["customer"], "customer")
        if customer.get("_deleted"):
            raise self.bad("customer", "No such customer: '%s'" % p["customer"], "resource_missing")
        return customer

    def _line_items(self, p, mode):
        items = _items(p.get("line_items"))
        if mode == "setup":
            if items:
                raise self.bad("line_items", "You can not pass `line_items` in `setup` mode.")
            return []
        if not items:
            raise self.bad("line_items", "Missing required param: line_items.", "parameter_missing")
        out = []
        for i, item in enumerate(items):
            where = "line_items[%d]" % i
            if not item.get("price"):
                raise self.bad(where + "[price]", "Missing required param: %s[price]." % where, "parameter_missing")
            price = self._find("prices", item["price"], where + "[price]")
            if not price["active"]:
                raise self.bad(where + "[price]", "The price specified is inactive. This field only accepts active "
                               "prices.")
            metered = bool(price["recurring"]) and price["recurring"]["usage_type"] == "metered"
            if metered and item.get("quantity") not in (None, ""):
                raise self.bad(where + "[quantity]", "Quantity should not be specified where usage_type is "
                               "`metered`. Remove quantity from `%s`." % where)
            if not metered and item.get("quantity") in (None, ""):
                raise self.bad(where + "[quantity]", "Missing required param: %s[quantity]." % where,
                               "parameter_missing")
            out.append({"price": price, "quantity": None if metered else int(item["quantity"])})
        recurring = [i for i in out if i["price"]["recurring"]]
        if mode == "subscription" and not recurring:
            raise self.bad("line_items", "You must provide at least one recurring price in `subscription` mode when "
                           "using prices.")
        if mode == "payment" and recurring:
            raise self.bad("line_items", "You specified `payment` mode but passed a recurring price. Either switch to "
                           "`subscription` mode or use only one-time prices.")
        if len(recurring) > MAX_SUBSCRIPTION_ITEMS:
            raise self.bad("line_items", "A subscription Checkout Session can have at most %d recurring line items."
                           % MAX_SUBSCRIPTION_ITEMS)
        if len({i["price"]["currency"] for i in out}) > 1:
            raise self.bad("line_items", "All prices must be in the same currency.")
        return out

    def _checkout_rules(self, p, mode):
        only = {"customer_creation": ("payment", "setup"), "payment_method_collection": ("subscription",),
                "subscription_data": ("subscription",), "setup_intent_data": ("setup",),
                "payment_intent_data": ("payment",)}
        for name, modes in only.items():
            if p.get(name) not in (None, "") and mode not in modes:
                raise self.bad(name, "`%s` can only be used in %s mode." % (name, " or ".join(modes)))
        if p.get("customer") and p.get("customer_email"):
            raise self.bad("customer_email", "You may only specify one of these parameters: customer, customer_email.")
        if len(p.get("client_reference_id") or "") > MAX_REFERENCE:
            raise self.bad("client_reference_id", "client_reference_id must be at most %d characters." % MAX_REFERENCE)
        ui_mode = p.get("ui_mode", "hosted_page")
        if ui_mode == "hosted_page" and not p.get("success_url"):
            raise self.bad("success_url", "Missing required param: success_url.", "parameter_missing")
        for name in ("success_url", "cancel_url"):
            if ui_mode != "hosted_page" and p.get(name):
                raise self.bad(name, "`%s` is not allowed when ui_mode is %s." % (name, ui_mode))
        if mode == "setup" and not p.get("currency") and not p.get("allowed_payment_method_types"):
            raise self.bad("currency", "Missing required param: currency. It is required in `setup` mode when "
                           "`allowed_payment_method_types` is not set.", "parameter_missing")

    def checkout_create(self, p):
        self._require(p, "mode")
        mode = p["mode"]
        self._checkout_rules(p, mode)
        customer = self._session_customer(p)
        items = self._line_items(p, mode)
        now = self.now()
        expires = int(p.get("expires_at") or now + 86400)
        if not now + 1800 <= expires <= now + 86400:
            raise self.bad("expires_at", "The `expires_at` timestamp must be between 30 minutes and 24 hours after "
                           "the Checkout Session is created.")
        sub_data = p.get("subscription_data") or {}
        obj = self._new("checkout/sessions", {
            "mode": mode, "status": "open", "payment_status": "unpaid" if mode != "setup" else "no_payment_required",
            "customer": customer["id"] if customer else None, "customer_email": p.get("customer_email"),
            "client_reference_id": p.get("client_reference_id"), "currency":
            (items[0]["price"]["currency"] if items else p.get("currency")),
            "metadata": self._metadata({}, p.get("metadata")), "success_url": p.get("success_url"),
            "cancel_url": p.get("cancel_url"), "ui_mode": p.get("ui_mode", "hosted_page"), "expires_at": expires,
            "subscription": None, "setup_intent": None, "payment_intent": None, "amount_total":
            sum((i["price"]["unit_amount"] or 0) * i["quantity"] for i in items if i["quantity"]),
            "_items": [{"price": i["price"]["id"], "quantity": i["quantity"]} for i in items],
            "_subscription_metadata": self._metadata({}, sub_data.get("metadata")),
            "_trial_days": int(sub_data.get("trial_period_days") or 0)})
        obj["url"] = "https://checkout.stripe.com/c/pay/%s" % obj["id"]
        return self.out(obj)

    def checkout_get(self, p, oid):
        return self.out(self._find("checkout/sessions", oid))

    def complete_checkout(self, session_id, declines=False):
        """The customer completes the hosted page: a card saved as the customer's default; in subscription mode
        the subscription created on the session's prices. Returns the session."""
        with self.lock:
            session = self._find("checkout/sessions", session_id)
            if session["status"] != "open" or session["expires_at"] < self.now():
                raise ValueError("checkout session %s is %s" % (session_id, session["status"]))
            customer_id = session["customer"] or self.customer_create(
                {"email": session["customer_email"] or "buyer@example.com"})["id"]
            self.attach_payment_method(customer_id, declines=declines)
            session["customer"] = customer_id
            if session["mode"] == "subscription":
                items = {}
                for i, item in enumerate(session["_items"]):
                    items[str(i)] = {"price": item["price"]}
                    if item["quantity"]:  # metered prices have none
                        items[str(i)]["quantity"] = str(item["quantity"])
                params = {"customer": customer_id, "items": items, "metadata": session["_subscription_metadata"]}
                if session["_trial_days"]:
                    params["trial_period_days"] = str(session["_trial_days"])
                sub = self.sub_create(params)
                session.update(subscription=sub["id"], payment_status="paid")
            else:
                session["setup_intent"] = "seti_%s" % session["id"][-14:]
            session["status"] = "complete"
            self._emit("checkout.session.completed", self.out(session))
            self._save()
            return self.out(session)

    def portal_session_create(self, p):
        self._require(p, "customer")
        customer = self._session_customer(p)
        if p.get("configuration"):
            config = self._find("billing_portal/configurations", p["configuration"], "configuration")
            if not config["active"]:
                raise self.bad("configuration", "You can't create a portal session with an inactive configuration.")
        else:
            config = next((c for c in self.db["billing_portal/configurations"].values() if c["is_default"]), None)
            if config is None:
                raise self.bad("configuration", "No configuration provided and your test mode default configuration "
                               "has not been created. Provide a configuration or create your default by saving your "
                               "customer portal settings in test mode.")
        obj = self._new("billing_portal/sessions", {
            "customer": customer["id"], "configuration": config["id"], "flow": None, "locale": p.get("locale"),
            "on_behalf_of": None, "return_url": p.get("return_url") or config.get("default_return_url")})
        obj["url"] = "https://billing.stripe.com/p/session/test_%s" % obj["id"][4:]
        return self.out(obj)
