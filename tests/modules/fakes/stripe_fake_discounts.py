"""Coupons, promotion codes and subscription discounts of the Stripe fake (mixed into FakeStripe).

State rules, besides the SDK's typed parameters (checked before these run):
- a coupon has ``percent_off`` (0 < x <= 100) or ``amount_off`` with ``currency``, never both; ``duration_in_months``
  only and always with ``duration=repeating``; ``currency_options`` only with ``amount_off``; only ``name``,
  ``metadata`` and ``currency_options`` change afterwards (the rest are not update parameters); a deleted coupon is
  gone (404) and its promotion codes stop being active; ``valid`` is false once deleted, past ``redeem_by`` or
  redeemed ``max_redemptions`` times;
- a promotion code's ``code`` has letters and digits only and is unique, regardless of case, among the active codes
  of the same customer (or of all customers); ``expires_at`` is in the future and not after the coupon's
  ``redeem_by``; ``minimum_amount`` needs ``minimum_amount_currency``; only ``active``, ``metadata`` and
  ``restrictions[currency_options]`` change; a code is active only while its coupon is valid, before it expires and
  below its ``max_redemptions``, and cannot be reactivated otherwise;
- a subscription takes ``discounts`` (a coupon or a promotion code per entry); a promotion code must be active,
  for this customer, and meet its restrictions (first transaction, minimum amount of the first invoice); an
  ``amount_off`` coupon must have an amount in the subscription's currency; each redemption counts.
"""

from __future__ import annotations

import re
import secrets

CODE_RE = re.compile(r"^[a-zA-Z0-9]{1,500}$")
COUPON_NAME_MAX = 40


class DiscountsMixin:
    """Routes and rules for /v1/coupons, /v1/promotion_codes and subscription discounts. The fake provides
    ``bad(param, message, code)`` and ``missing(name, id, param)`` (its 400 and 404 errors)."""

    def discount_routes(self):
        return [
            ("POST", r"/v1/coupons", self.coupon_create),
            ("GET", r"/v1/coupons", self.coupon_list),
            ("GET", r"/v1/coupons/([^/]+)", self.coupon_get),
            ("POST", r"/v1/coupons/([^/]+)", self.coupon_update),
            ("DELETE", r"/v1/coupons/([^/]+)", self.coupon_delete),
            ("POST", r"/v1/promotion_codes", self.promo_create),
            ("GET", r"/v1/promotion_codes", self.promo_list),
            ("GET", r"/v1/promotion_codes/([^/]+)", self.promo_get),
            ("POST", r"/v1/promotion_codes/([^/]+)", self.promo_update),
        ]

    # --- coupons
    def _coupon_view(self, c):
        out = self.out(c)
        out["valid"] = self._coupon_valid(c)
        return out

    def _coupon_valid(self, c):
        return (not c.get("_deleted") and (c["redeem_by"] is None or self.now() < c["redeem_by"])
                and (c["max_redemptions"] is None or c["times_redeemed"] < c["max_redemptions"]))

    def _coupon(self, oid, param="id"):
        c = self.db["coupons"].get(oid)
        if c is None or c.get("_deleted"):
            raise self.missing("coupon", oid, param)
        return c

    def _currency_options(self, options, param):
        out = {}
        for cur, opt in (options or {}).items():
            self._currency(cur)
            amount = int(opt["amount_off"])
            if amount <= 0:
                raise self.bad("%s[%s][amount_off]" % (param, cur), "amount_off must be greater than 0.")
            out[cur.lower()] = {"amount_off": amount}
        return out

    def coupon_create(self, p):
        percent, amount = p.get("percent_off"), p.get("amount_off")
        if (percent is None) == (amount is None):
            raise self.bad("percent_off" if percent is not None else None,
                           "You must pass exactly one of amount_off or percent_off.")
        if percent is not None and not 0 < float(percent) <= 100:
            raise self.bad("percent_off", "Invalid percent_off: must be greater than 0 and at most 100.")
        currency = None
        if amount is not None:
            if int(amount) <= 0:
                raise self.bad("amount_off", "Invalid amount_off: must be greater than 0.")
            if not p.get("currency"):
                raise self.bad("currency", "You must pass currency when passing amount_off.", "parameter_missing")
            currency = self._currency(p["currency"])
        if p.get("currency_options") and amount is None:
            raise self.bad("currency_options", "currency_options can only be used with amount_off.")
        duration = p.get("duration", "once")
        months = p.get("duration_in_months")
        if duration == "repeating" and months is None:
            raise self.bad("duration_in_months", "Missing required param: duration_in_months.", "parameter_missing")
        if duration != "repeating" and months is not None:
            raise self.bad("duration_in_months", "duration_in_months can only be set when duration is repeating.")
        if months is not None and int(months) <= 0:
            raise self.bad("duration_in_months", "duration_in_months must be greater than 0.")
        if p.get("max_redemptions") is not None and int(p["max_redemptions"]) <= 0:
            raise self.bad("max_redemptions", "max_redemptions must be greater than 0.")
        if p.get("redeem_by") is not None and int(p["redeem_by"]) <= self.now():
            raise self.bad("redeem_by", "redeem_by must be in the future.")
        if p.get("name") is not None and len(p["name"]) > COUPON_NAME_MAX:
            raise self.bad("name", "Invalid name: must be at most %d characters." % COUPON_NAME_MAX)
        products = [self._find("products", pid, "applies_to[products][%d]" % i)["id"]
                    for i, pid in enumerate(((p.get("applies_to") or {}).get("products") or {}).values())]
        fields = {
            "amount_off": int(amount) if amount is not None else None,
            "applies_to": {"products": products} if products else None, "currency": currency,
            "currency_options": self._currency_options(p.get("currency_options"), "currency_options") or None,
            "duration": duration, "duration_in_months": int(months) if months is not None else None,
            "max_redemptions": int(p["max_redemptions"]) if p.get("max_redemptions") is not None else None,
            "metadata": self._metadata({}, p.get("metadata")), "name": p.get("name"),
            "percent_off": float(percent) if percent is not None else None,
            "redeem_by": int(p["redeem_by"]) if p.get("redeem_by") is not None else None, "times_redeemed": 0}
        if p.get("id") in self.db["coupons"]:
            raise self.bad("id", "Coupon already exists.", "resource_already_exists")
        coupon = self._new("coupons", fields, p.get("id"))
        self._emit("coupon.created", self._coupon_view(coupon))
        return self._coupon_view(coupon)

    def coupon_get(self, p, oid):
        return self._coupon_view(self._coupon(oid))

    def coupon_update(self, p, oid):
        c = self._coupon(oid)
        before = self._coupon_view(c)
        if p.get("name") is not None:
            if len(p["name"]) > COUPON_NAME_MAX:
                raise self.bad("name", "Invalid name: must be at most %d characters." % COUPON_NAME_MAX)
            c["name"] = p["name"] or None
        if p.get("currency_options"):
            if c["amount_off"] is None:
                raise self.bad("currency_options", "currency_options can only be used with amount_off.")
            c["currency_options"] = dict(c["currency_options"] or {},
                                         **self._currency_options(p["currency_options"], "currency_options"))
        c["metadata"] = self._metadata(c["metadata"], p.get("metadata"))
        self._emit("coupon.updated", self._coupon_view(c), before)
        return self._coupon_view(c)

    def coupon_delete(self, p, oid):
        c = self._coupon(oid)
        c["_deleted"] = True
        self._emit("coupon.deleted", self._coupon_view(c))
        return {"id": oid, "object": "coupon", "deleted": True}

    @staticmethod
    def _paging(p):
        """List parameters typed (the SDK's types were checked before)."""
        return dict(p, **({"limit": int(p["limit"])} if "limit" in p else {}))

    def coupon_list(self, p):
        p = self._paging(p)
        return self._list("coupons", p, "/v1/coupons", lambda o: not o.get("_deleted"), view=self._coupon_view)

    # --- promotion codes
    def _promo_active(self, pc):
        coupon = self.db["coupons"][pc["promotion"]["coupon"]]
        return (pc["_active"] and self._coupon_valid(coupon)
                and (pc["expires_at"] is None or self.now() < pc["expires_at"])
                and (pc["max_redemptions"] is None or pc["times_redeemed"] < pc["max_redemptions"]))

    def promotion_codes(self):
        """Every promotion code as the API shows it (``active`` as it is now), oldest first."""
        with self.lock:
            return [self._promo_view(pc) for pc in sorted(self.db["promotion_codes"].values(), key=lambda o: o["_seq"])]

    def _promo_view(self, pc):
        out = self.out(pc)
        out["active"] = self._promo_active(pc)
        return out

    def _code_taken(self, code, customer, skip=None):
        for other in self.db["promotion_codes"].values():
            if (other["id"] != skip and other["code"].lower() == code.lower() and other["customer"] == customer
                    and self._promo_active(other)):
                return True
        return False

    def promo_create(self, p):
        promo = p.get("promotion") or {}
        if not promo.get("coupon"):
            raise self.bad("promotion[coupon]", "Missing required param: promotion[coupon].", "parameter_missing")
        coupon = self._coupon(promo["coupon"], "promotion[coupon]")
        if not self._coupon_valid(coupon):
            raise self.bad("promotion[coupon]", "Coupon %s is no longer valid." % coupon["id"])
        customer = p.get("customer")
        if customer:
            self._find("customers", customer, "customer")
        code = p.get("code") or secrets.token_hex(4).upper()
        if not CODE_RE.match(code):
            raise self.bad("code", "Invalid code: only letters (a-z, A-Z) and digits (0-9) are allowed, up to 500.")
        active = p.get("active", "true") == "true"
        if active and self._code_taken(code, customer):
            raise self.bad("code", "An active promotion code with `code: %s` already exists." % code,
                           "resource_already_exists")
        expires = int(p["expires_at"]) if p.get("expires_at") is not None else None
        if expires is not None and expires <= self.now():
            raise self.bad("expires_at", "expires_at must be in the future.")
        if expires is not None and coupon["redeem_by"] is not None and expires > coupon["redeem_by"]:
            raise self.bad("expires_at", "The promotion code's expires_at cannot be after the coupon's redeem_by.")
        if p.get("max_redemptions") is not None and int(p["max_redemptions"]) <= 0:
            raise self.bad("max_redemptions", "max_redemptions must be greater than 0.")
        r = p.get("restrictions") or {}
        if (r.get("minimum_amount") is None) != (r.get("minimum_amount_currency") is None):
            name = "minimum_amount_currency" if r.get("minimum_amount") is not None else "minimum_amount"
            raise self.bad("restrictions[%s]" % name, "minimum_amount and minimum_amount_currency go together.",
                           "parameter_missing")
        restrictions = {
            "currency_options": {c: {"minimum_amount": int(o["minimum_amount"])}
                                 for c, o in (r.get("currency_options") or {}).items()},
            "first_time_transaction": r.get("first_time_transaction") == "true",
            "minimum_amount": int(r["minimum_amount"]) if r.get("minimum_amount") is not None else None,
            "minimum_amount_currency": self._currency(r["minimum_amount_currency"])
            if r.get("minimum_amount_currency") else None}
        pc = self._new("promotion_codes", {
            "code": code, "customer": customer, "customer_account": None, "expires_at": expires,
            "max_redemptions": int(p["max_redemptions"]) if p.get("max_redemptions") is not None else None,
            "metadata": self._metadata({}, p.get("metadata")),
            "promotion": {"type": "coupon", "coupon": coupon["id"]}, "restrictions": restrictions,
            "times_redeemed": 0, "_active": active})
        self._emit("promotion_code.created", self._promo_view(pc))
        return self._promo_view(pc)

    def promo_get(self, p, oid):
        return self._promo_view(self._find("promotion_codes", oid))

    def promo_update(self, p, oid):
        pc = self._find("promotion_codes", oid)
        before = self._promo_view(pc)
        if "active" in p:
            want = p["active"] == "true"
            if want and not before["active"]:
                pc["_active"] = True
                if not self._promo_active(pc):
                    pc["_active"] = False
                    raise self.bad("active", "This promotion code cannot be reactivated: its coupon is no longer valid, "
                                   "it expired or it reached max_redemptions.")
                if self._code_taken(pc["code"], pc["customer"], skip=pc["id"]):
                    pc["_active"] = False
                    raise self.bad("active", "An active promotion code with `code: %s` already exists." % pc["code"],
                                   "resource_already_exists")
            elif not want:
                pc["_active"] = False
        options = ((p.get("restrictions") or {}).get("currency_options") or {})
        for cur, opt in options.items():
            pc["restrictions"]["currency_options"][self._currency(cur)] = {"minimum_amount": int(opt["minimum_amount"])}
        pc["metadata"] = self._metadata(pc["metadata"], p.get("metadata"))
        self._emit("promotion_code.updated", self._promo_view(pc), before)
        return self._promo_view(pc)

    def promo_list(self, p):
        p = self._paging(p)

        def pred(o):
            return (("active" not in p or self._promo_active(o) == (p["active"] == "true"))
                    and ("code" not in p or o["code"].lower() == p["code"].lower())
                    and ("coupon" not in p or o["promotion"]["coupon"] == p["coupon"])
                    and ("customer" not in p or o["customer"] == p["customer"]))
        return self._list("promotion_codes", p, "/v1/promotion_codes", pred, view=self._promo_view)

    # --- subscription discounts
    def apply_discounts(self, sub, entries, first_amount):
        """Replace a subscription's discounts with ``entries`` (the coerced ``discounts`` parameter; [] clears)."""
        kept, new = [], []
        for i, entry in enumerate(entries):
            name = "discounts[%d]" % i
            given = [k for k in ("coupon", "promotion_code", "discount") if entry.get(k)]
            if len(given) != 1:
                raise self.bad(name, "Each discount must have exactly one of coupon, promotion_code or discount.")
            if given[0] == "discount":
                if entry["discount"] not in sub["discounts"]:
                    raise self.bad(name + "[discount]", "No such discount: '%s'" % entry["discount"], "resource_missing")
                kept.append(entry["discount"])
                continue
            pc = None
            if given[0] == "promotion_code":
                pc = self._find("promotion_codes", entry["promotion_code"], name + "[promotion_code]")
                self._check_redeemable(pc, sub, first_amount, name + "[promotion_code]")
                coupon = self.db["coupons"][pc["promotion"]["coupon"]]
            else:
                coupon = self._coupon(entry["coupon"], name + "[coupon]")
                if not self._coupon_valid(coupon):
                    raise self.bad(name + "[coupon]", "Coupon %s is no longer valid." % coupon["id"])
            if coupon["amount_off"] is not None and coupon["currency"] != sub["currency"] and \
                    sub["currency"] not in (coupon["currency_options"] or {}):
                raise self.bad(name, "The coupon %s has no amount in %s, the currency of the subscription."
                               % (coupon["id"], sub["currency"]))
            new.append((coupon, pc))
        if len({c["id"] for c, _pc in new}) < len(new):
            raise self.bad("discounts", "A coupon can only be applied once to the same subscription.")
        now = self.now()
        ids = list(kept)
        for coupon, pc in new:
            months = coupon["duration_in_months"]
            end = now + months * 30 * 86400 if coupon["duration"] == "repeating" else None
            # once: the next invoice only (_invoices counts the invoices it reduced)
            di = self._new("discounts", {
                "checkout_session": None, "customer": sub["customer"], "customer_account": None, "end": end,
                "invoice": None, "invoice_item": None, "promotion_code": pc["id"] if pc else None,
                "source": {"type": "coupon", "coupon": coupon["id"]}, "start": now, "subscription": sub["id"],
                "subscription_item": None, "_invoices": 0})
            coupon["times_redeemed"] += 1
            if pc:
                pc["times_redeemed"] += 1
            ids.append(di["id"])
        sub["discounts"] = ids

    def _check_redeemable(self, pc, sub, first_amount, param):
        if not self._promo_active(pc):
            raise self.bad(param, "This promotion code is not active.")
        if pc["customer"] and pc["customer"] != sub["customer"]:
            raise self.bad(param, "This promotion code cannot be redeemed by this customer.")
        r = pc["restrictions"]
        if r["first_time_transaction"] and any(
                s["customer"] == sub["customer"] and s["id"] != sub["id"] for s in self.db["subscriptions"].values()):
            raise self.bad(param, "This promotion code cannot be redeemed because the associated customer has prior "
                           "transactions.")
        minimum = (r["currency_options"].get(sub["currency"]) or {}).get("minimum_amount")
        if minimum is None and r["minimum_amount_currency"] == sub["currency"]:
            minimum = r["minimum_amount"]
        if minimum is not None and first_amount < minimum:
            raise self.bad(param, "This promotion code requires a minimum amount of %d %s." % (minimum, sub["currency"]))

    def discounted(self, sub, amount):
        """The amount of the subscription's next invoice after its discounts (called once per invoice)."""
        for di_id in sub.get("discounts") or []:
            di = self.db["discounts"][di_id]
            coupon_once = self.db["coupons"][di["source"]["coupon"]]["duration"] == "once"
            if (di["end"] is not None and self.now() >= di["end"]) or (coupon_once and di["_invoices"]):
                continue
            di["_invoices"] += 1
            coupon = self.db["coupons"][di["source"]["coupon"]]
            if coupon["percent_off"] is not None:
                amount -= round(amount * coupon["percent_off"] / 100)
            else:
                off = coupon["amount_off"] if coupon["currency"] == sub["currency"] else \
                    coupon["currency_options"][sub["currency"]]["amount_off"]
                amount -= min(off, amount)
        return amount

    def expand_discounts(self, out, expand):
        """``expand[]=discounts`` (``data.discounts`` on a list): the discount objects instead of their ids; with
        ``discounts.source.coupon``, each with its coupon."""
        expand = [e[5:] if e.startswith("data.") else e for e in expand]
        if "discounts" in expand or "discounts.source.coupon" in expand:
            out["discounts"] = [self.out(self.db["discounts"][d]) for d in out.get("discounts") or []]
        if "discounts.source.coupon" in expand:
            for d in out["discounts"]:
                d["source"] = dict(d["source"], coupon=self._coupon_view(self.db["coupons"][d["source"]["coupon"]]))
        return out
