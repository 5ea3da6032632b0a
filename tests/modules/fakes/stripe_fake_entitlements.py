"""Entitlements of the Stripe fake (mixed into FakeStripe): features, the features attached to products, and
each customer's active entitlements with their summary events.

State rules, besides the SDK's typed parameters (checked before these run), at the pinned API version:
- a feature needs ``lookup_key`` and ``name`` (each up to 80 characters); the lookup key is unique among active
  features and never changes; an archived feature (``active=false``) is left out of the list unless
  ``archived=true`` is asked, and cannot be attached to a product;
- a feature is attached to a product once; a product feature is removed with DELETE;
- a customer's active entitlements are the features of the products of its subscriptions that have not ended
  (``active``, ``trialing``, ``past_due``, ``unpaid`` and ``paused`` keep them; ``canceled``, ``incomplete`` and
  ``incomplete_expired`` do not); ``customer`` is required to list them;
- when that set changes (a subscription created, changed or ended, a feature attached or removed), Stripe sends
  ``entitlements.active_entitlement_summary.updated`` with the customer's whole set.
"""

from __future__ import annotations

import hashlib

MAX_CHARS = 80
# subscription statuses whose products' features a customer keeps
ENTITLED = {"active", "trialing", "past_due", "unpaid", "paused"}


def _bool(value, default=False):
    return default if value is None else value == "true"


class EntitlementsMixin:
    """Routes and rules for /v1/entitlements and /v1/products/{id}/features."""

    def entitlement_routes(self):
        return [
            ("POST", r"/v1/entitlements/features", self.feature_create),
            ("GET", r"/v1/entitlements/features", self.feature_list),
            ("GET", r"/v1/entitlements/features/([^/]+)", self.feature_get),
            ("POST", r"/v1/entitlements/features/([^/]+)", self.feature_update),
            ("POST", r"/v1/products/([^/]+)/features", self.product_feature_create),
            ("GET", r"/v1/products/([^/]+)/features", self.product_feature_list),
            ("GET", r"/v1/products/([^/]+)/features/([^/]+)", self.product_feature_get),
            ("DELETE", r"/v1/products/([^/]+)/features/([^/]+)", self.product_feature_delete),
            ("GET", r"/v1/entitlements/active_entitlements", self.active_entitlement_list),
        ]

    def _chars(self, p, name):
        if name in p and len(p[name]) > MAX_CHARS:
            raise self.bad(name, "%s must be at most %d characters." % (name, MAX_CHARS), "string_too_long")

    def feature_create(self, p):
        self._require(p, "lookup_key", "name")
        for name in ("lookup_key", "name"):
            self._chars(p, name)
        if any(f["active"] and f["lookup_key"] == p["lookup_key"] for f in self.db["entitlements/features"].values()):
            raise self.bad("lookup_key", "A feature with the lookup_key '%s' already exists." % p["lookup_key"],
                           "resource_already_exists")
        obj = self._new("entitlements/features", {"active": True, "lookup_key": p["lookup_key"],
                                                  "metadata": self._metadata({}, p.get("metadata")),
                                                  "name": p["name"]})
        del obj["created"]  # a feature has no created time
        return self.out(obj)

    def feature_update(self, p, oid):
        obj = self._find("entitlements/features", oid)
        self._chars(p, "name")
        if "active" in p:
            obj["active"] = _bool(p["active"])
        if p.get("name"):
            obj["name"] = p["name"]
        obj["metadata"] = self._metadata(obj["metadata"], p.get("metadata"))
        return self.out(obj)

    def feature_get(self, p, oid):
        return self.out(self._find("entitlements/features", oid))

    def feature_list(self, p):
        p = self._paging(p)
        archived = _bool(p.get("archived"))
        return self._list("entitlements/features", p, "/v1/entitlements/features", lambda o: (
            o["active"] != archived and p.get("lookup_key") in (None, o["lookup_key"])))

    def _product_feature_view(self, obj):
        return {"id": obj["id"], "object": "product_feature", "livemode": False,
                "entitlement_feature": self.out(self.db["entitlements/features"][obj["_feature"]])}

    def product_feature_create(self, p, product_id):
        self._find("products", product_id)
        self._require(p, "entitlement_feature")
        feature = self._find("entitlements/features", p["entitlement_feature"], "entitlement_feature")
        if not feature["active"]:
            raise self.bad("entitlement_feature", "The feature %s is archived and cannot be attached to a product."
                           % feature["id"])
        if any(pf["_product"] == product_id and pf["_feature"] == feature["id"]
               for pf in self.db["product_features"].values()):
            raise self.bad("entitlement_feature", "The feature %s is already attached to the product %s."
                           % (feature["id"], product_id), "resource_already_exists")
        obj = self._new("product_features", {"_product": product_id, "_feature": feature["id"]})
        self._entitlements_changed()
        return self._product_feature_view(obj)

    def product_feature_list(self, p, product_id):
        self._find("products", product_id)
        p = self._paging(p)
        return self._list("product_features", p, "/v1/products/%s/features" % product_id,
                          lambda o: o["_product"] == product_id, view=self._product_feature_view)

    def _product_feature(self, product_id, oid):
        self._find("products", product_id)
        obj = self.db["product_features"].get(oid)
        if obj is None or obj["_product"] != product_id:
            raise self.missing("product feature", oid, "id")
        return obj

    def product_feature_get(self, p, product_id, oid):
        return self._product_feature_view(self._product_feature(product_id, oid))

    def product_feature_delete(self, p, product_id, oid):
        self._product_feature(product_id, oid)
        del self.db["product_features"][oid]
        self._entitlements_changed()
        return {"id": oid, "object": "product_feature", "deleted": True}

    def _active_entitlements(self, customer):
        """The customer's active entitlements, one per feature, in a stable order."""
        products = {item["price"]["product"] for sub in self.db["subscriptions"].values()
                    if sub["customer"] == customer and sub["status"] in ENTITLED
                    for item in self._sub_view(sub)["items"]["data"]}
        features = sorted({pf["_feature"] for pf in self.db["product_features"].values()
                           if pf["_product"] in products})
        return [{"id": "ent_" + hashlib.sha256((customer + f).encode()).hexdigest()[:14],
                 "object": "entitlements.active_entitlement", "feature": f, "livemode": False,
                 "lookup_key": self.db["entitlements/features"][f]["lookup_key"]} for f in features]

    def active_entitlement_list(self, p):
        p = self._paging(p)
        self._require(p, "customer")
        self._find("customers", p["customer"], "customer")
        items = self._active_entitlements(p["customer"])
        start = 0
        if p.get("starting_after"):
            ids = [e["id"] for e in items]
            if p["starting_after"] not in ids:
                raise self.bad("starting_after", "No such object: '%s'" % p["starting_after"], "resource_missing")
            start = ids.index(p["starting_after"]) + 1
        limit = p.get("limit", 10)
        page = items[start:start + limit]
        return {"object": "list", "data": page, "has_more": start + limit < len(items),
                "url": "/v1/entitlements/active_entitlements"}

    def _entitlements_changed(self):
        """Send a summary event to each customer whose active entitlements changed (called with the lock held,
        after any change to subscriptions or product features)."""
        seen = self.db.setdefault("entitlement_summaries", {})
        for customer in sorted({s["customer"] for s in self.db["subscriptions"].values()} | set(seen)):
            now = self._active_entitlements(customer)
            before = seen.get(customer, [])
            if now == before:
                continue
            seen[customer] = now

            def summary(items, customer=customer):
                return {"object": "entitlements.active_entitlement_summary", "customer": customer, "livemode": False,
                        "entitlements": {"object": "list", "data": items, "has_more": False,
                                         "url": "/v1/customer/%s/entitlements" % customer}}
            self._emit("entitlements.active_entitlement_summary.updated", summary(now), summary(before))
