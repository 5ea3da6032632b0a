"""Customer Portal configurations of the Stripe fake (mixed into FakeStripe).

State rules, besides the SDK's typed parameters (checked before these run), at the pinned API version:
- ``features`` is required on create; an enabled ``subscription_update`` needs ``products`` and
  ``default_allowed_updates`` (optional only while it is disabled, since 2024-09-30.acacia), at most 10 products,
  each an existing product with one or more prices, each price an existing recurring price of that product;
- ``cancellation_reason`` needs ``options``; a cancellation's ``proration_behavior`` is ``none``, or
  ``create_prorations`` with ``mode=immediately`` only, never ``always_invoice`` (the SDK's own description);
- a configuration is never deleted: ``active=false`` retires it, and an update replaces the nested objects it
  names (``products`` as a whole) and keeps the rest; an empty string unsets an emptyable field.
"""

from __future__ import annotations

MAX_PRODUCTS = 10


def _bool(value, default=False):
    return default if value is None else value == "true"


def _items(value):
    """A decoded form list (dict keyed by index), or '' (unset), as a list."""
    return [] if value in (None, "") else [value[k] for k in sorted(value, key=int)]


class PortalMixin:
    """Routes and rules for /v1/billing_portal/configurations."""

    def portal_routes(self):
        return [
            ("POST", r"/v1/billing_portal/configurations", self.portal_create),
            ("GET", r"/v1/billing_portal/configurations", self.portal_list),
            ("GET", r"/v1/billing_portal/configurations/([^/]+)", self.portal_get),
            ("POST", r"/v1/billing_portal/configurations/([^/]+)", self.portal_update),
        ]

    def _portal_features(self, features, current):
        """The stored features: ``current`` with the parts the request names replaced."""
        out = dict(current)
        cu = features.get("customer_update")
        if cu is not None:
            out["customer_update"] = {"allowed_updates": _items(cu.get("allowed_updates")),
                                      "enabled": _bool(cu.get("enabled"))}
        for name in ("invoice_history", "payment_method_update"):
            if features.get(name) is not None:
                out[name] = dict(current[name], enabled=_bool(features[name].get("enabled")))
        cancel = features.get("subscription_cancel")
        if cancel is not None:
            reason = cancel.get("cancellation_reason")
            mode = cancel.get("mode", current["subscription_cancel"]["mode"])
            proration = cancel.get("proration_behavior")
            if proration == "always_invoice" or (proration == "create_prorations" and mode != "immediately"):
                raise self.bad("features[subscription_cancel][proration_behavior]",
                               "proration_behavior %s is not allowed with mode %s: create_prorations only with "
                               "immediately, always_invoice never." % (proration, mode))
            out["subscription_cancel"] = {
                "cancellation_reason": current["subscription_cancel"]["cancellation_reason"] if reason is None else
                {"enabled": _bool(reason.get("enabled")), "options": _items(reason.get("options"))},
                "enabled": _bool(cancel.get("enabled")), "mode": mode,
                "proration_behavior": cancel.get("proration_behavior") or "none"}
        update = features.get("subscription_update")
        if update is not None:
            out["subscription_update"] = self._portal_update_feature(update, current["subscription_update"])
        return out

    def _portal_update_feature(self, update, current):
        param = "features[subscription_update]"
        enabled = _bool(update.get("enabled"), current["enabled"])
        products = current["products"] if "products" not in update else [
            {"product": p["product"], "prices": _items(p.get("prices")), "adjustable_quantity":
             {"enabled": _bool((p.get("adjustable_quantity") or {}).get("enabled")), "maximum": None, "minimum": 1}}
            for p in _items(update["products"])]
        allowed = current["default_allowed_updates"] if "default_allowed_updates" not in update else \
            _items(update["default_allowed_updates"])
        if enabled:
            for name, value in (("products", products), ("default_allowed_updates", allowed)):
                if not value:
                    raise self.bad("%s[%s]" % (param, name), "Missing required param: %s[%s]." % (param, name),
                                   "parameter_missing")
        if len(products) > MAX_PRODUCTS:
            raise self.bad(param + "[products]", "You can only specify up to %d products." % MAX_PRODUCTS)
        for i, entry in enumerate(products):
            where = "%s[products][%d]" % (param, i)
            product = self._find("products", entry["product"], where + "[product]")
            if not entry["prices"]:
                raise self.bad(where + "[prices]", "Missing required param: %s[prices]." % where, "parameter_missing")
            for j, pid in enumerate(entry["prices"]):
                price = self._find("prices", pid, "%s[prices][%d]" % (where, j))
                if price["product"] != product["id"]:
                    raise self.bad("%s[prices][%d]" % (where, j), "The price %s does not belong to the product %s."
                                   % (pid, product["id"]))
                if price["type"] != "recurring":
                    raise self.bad("%s[prices][%d]" % (where, j), "The price %s is not a recurring price." % pid)
        schedule = update.get("schedule_at_period_end")
        return {
            "billing_cycle_anchor": update.get("billing_cycle_anchor", current["billing_cycle_anchor"]),
            "default_allowed_updates": allowed, "enabled": enabled, "products": products,
            "proration_behavior": update.get("proration_behavior", current["proration_behavior"]),
            "schedule_at_period_end": current["schedule_at_period_end"] if schedule is None else
            {"conditions": [{"type": c["type"]} for c in _items(schedule.get("conditions"))]},
            "trial_update_behavior": update.get("trial_update_behavior", current["trial_update_behavior"])}

    @staticmethod
    def _portal_defaults():
        return {
            "customer_update": {"allowed_updates": [], "enabled": False},
            "invoice_history": {"enabled": False},
            "payment_method_update": {"enabled": False, "payment_method_configuration": None},
            "subscription_cancel": {"cancellation_reason": {"enabled": False, "options": []}, "enabled": False,
                                    "mode": "at_period_end", "proration_behavior": "none"},
            "subscription_update": {"billing_cycle_anchor": None, "default_allowed_updates": [], "enabled": False,
                                    "products": [], "proration_behavior": "none",
                                    "schedule_at_period_end": {"conditions": []},
                                    "trial_update_behavior": "end_trial"}}

    def _portal_fields(self, p, obj):
        profile = p.get("business_profile")
        if profile is not None:
            obj["business_profile"] = dict(obj["business_profile"], **{
                k: (profile[k] or None) for k in ("headline", "privacy_policy_url", "terms_of_service_url")
                if k in profile})
        for name in ("default_return_url", "name"):
            if name in p:
                obj[name] = p[name] or None
        if p.get("login_page") is not None:
            on = _bool(p["login_page"].get("enabled"))
            obj["login_page"] = {"enabled": on, "url": "https://billing.stripe.com/p/login/test_%s" % obj["id"][4:]
                                 if on else None}
        obj["metadata"] = self._metadata(obj["metadata"], p.get("metadata"))
        obj["updated"] = self.now()

    def portal_create(self, p):
        self._require(p, "features")
        features = self._portal_features(p["features"], self._portal_defaults())
        obj = self._new("billing_portal/configurations", {
            "active": True, "application": None, "is_default": False, "features": features, "metadata": {},
            "business_profile": {"headline": None, "privacy_policy_url": None, "terms_of_service_url": None},
            "default_return_url": None, "login_page": {"enabled": False, "url": None}, "name": None})
        self._portal_fields(p, obj)
        self._emit("billing_portal.configuration.created", self.out(obj))
        return self.out(obj)

    def portal_update(self, p, oid):
        obj = self._find("billing_portal/configurations", oid)
        before = self.out(obj)
        if p.get("features") is not None:
            obj["features"] = self._portal_features(p["features"], obj["features"])
        if "active" in p:
            obj["active"] = _bool(p["active"])
        self._portal_fields(p, obj)
        self._emit("billing_portal.configuration.updated", self.out(obj), before)
        return self.out(obj)

    def portal_get(self, p, oid):
        return self.out(self._find("billing_portal/configurations", oid))

    def portal_list(self, p):
        p = self._paging(p)

        def pred(o):
            return (("active" not in p or o["active"] == _bool(p["active"]))
                    and ("is_default" not in p or o["is_default"] == _bool(p["is_default"])))
        return self._list("billing_portal/configurations", p, "/v1/billing_portal/configurations", pred)
