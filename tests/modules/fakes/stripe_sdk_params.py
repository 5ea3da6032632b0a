"""Request validation derived from the typed parameters of the pinned ``stripe`` SDK.

The SDK ships a TypedDict per API method, generated from Stripe's OpenAPI spec at the SDK's API version: every
parameter, its nesting, its type, its enum values and whether it is required. The fake checks each request against
the class of its route before its own (hand-written) behaviour runs, so a request that the real API would refuse for
its parameters fails the contract tests too. Where the SDK types an enum as ``Literal[...] | str`` (open for
forward compatibility), the listed values are the ones the API version knows, and only those pass here.
"""

from __future__ import annotations

import decimal
import re
import sys
import types
import typing

import typing_extensions
from stripe import params as P
from stripe._request_options import RequestOptions
from stripe.params import billing as PB
from stripe.params import billing_portal as PBP
from stripe.params import checkout as PC
from stripe.params import entitlements as PE
from stripe.params import tax as PT

_OPTIONS = set(RequestOptions.__annotations__)  # api_key, idempotency_key, ...: headers, not parameters

ROUTES = [
    ("POST", r"/v1/products", P.ProductCreateParams),
    ("GET", r"/v1/products", P.ProductListParams),
    ("GET", r"/v1/products/[^/]+", P.ProductRetrieveParams),
    ("POST", r"/v1/products/[^/]+", P.ProductUpdateParams),
    ("DELETE", r"/v1/products/[^/]+", P.ProductDeleteParams),
    ("POST", r"/v1/prices", P.PriceCreateParams),
    ("GET", r"/v1/prices", P.PriceListParams),
    ("GET", r"/v1/prices/[^/]+", P.PriceRetrieveParams),
    ("POST", r"/v1/prices/[^/]+", P.PriceUpdateParams),
    ("POST", r"/v1/billing/meters", PB.MeterCreateParams),
    ("GET", r"/v1/billing/meters", PB.MeterListParams),
    ("GET", r"/v1/billing/meters/[^/]+", PB.MeterRetrieveParams),
    ("POST", r"/v1/billing/meters/[^/]+", PB.MeterUpdateParams),
    ("POST", r"/v1/billing/meters/[^/]+/deactivate", PB.MeterDeactivateParams),
    ("POST", r"/v1/billing/meters/[^/]+/reactivate", PB.MeterReactivateParams),
    ("POST", r"/v1/billing/meter_events", PB.MeterEventCreateParams),
    ("GET", r"/v1/billing/meters/[^/]+/event_summaries", PB.MeterEventSummaryListParams),
    ("POST", r"/v1/customers", P.CustomerCreateParams),
    ("GET", r"/v1/customers", P.CustomerListParams),
    ("GET", r"/v1/customers/search", P.CustomerSearchParams),
    ("GET", r"/v1/customers/[^/]+", P.CustomerRetrieveParams),
    ("POST", r"/v1/customers/[^/]+", P.CustomerUpdateParams),
    ("POST", r"/v1/customers/[^/]+/tax_ids", P.CustomerCreateTaxIdParams),
    ("GET", r"/v1/customers/[^/]+/tax_ids", P.CustomerListTaxIdsParams),
    ("DELETE", r"/v1/customers/[^/]+/tax_ids/[^/]+", P.CustomerDeleteTaxIdParams),
    ("GET", r"/v1/tax/settings", PT.SettingsRetrieveParams),
    ("POST", r"/v1/tax/settings", PT.SettingsUpdateParams),
    ("POST", r"/v1/tax/registrations", PT.RegistrationCreateParams),
    ("GET", r"/v1/tax/registrations", PT.RegistrationListParams),
    ("POST", r"/v1/billing_portal/configurations", PBP.ConfigurationCreateParams),
    ("GET", r"/v1/billing_portal/configurations", PBP.ConfigurationListParams),
    ("GET", r"/v1/billing_portal/configurations/[^/]+", PBP.ConfigurationRetrieveParams),
    ("POST", r"/v1/billing_portal/configurations/[^/]+", PBP.ConfigurationUpdateParams),
    ("DELETE", r"/v1/customers/[^/]+", P.CustomerDeleteParams),
    ("POST", r"/v1/subscriptions", P.SubscriptionCreateParams),
    ("GET", r"/v1/subscriptions", P.SubscriptionListParams),
    ("GET", r"/v1/subscriptions/[^/]+", P.SubscriptionRetrieveParams),
    ("POST", r"/v1/subscriptions/[^/]+", P.SubscriptionUpdateParams),
    ("DELETE", r"/v1/subscriptions/[^/]+", P.SubscriptionCancelParams),
    ("POST", r"/v1/webhook_endpoints", P.WebhookEndpointCreateParams),
    ("GET", r"/v1/webhook_endpoints", P.WebhookEndpointListParams),
    ("GET", r"/v1/webhook_endpoints/[^/]+", P.WebhookEndpointRetrieveParams),
    ("POST", r"/v1/webhook_endpoints/[^/]+", P.WebhookEndpointUpdateParams),
    ("DELETE", r"/v1/webhook_endpoints/[^/]+", P.WebhookEndpointDeleteParams),
    ("GET", r"/v1/events", P.EventListParams),
    ("GET", r"/v1/events/[^/]+", P.EventRetrieveParams),
    ("GET", r"/v1/invoices", P.InvoiceListParams),
    ("GET", r"/v1/invoices/[^/]+", P.InvoiceRetrieveParams),
    ("POST", r"/v1/coupons", P.CouponCreateParams),
    ("GET", r"/v1/coupons", P.CouponListParams),
    ("GET", r"/v1/coupons/[^/]+", P.CouponRetrieveParams),
    ("POST", r"/v1/coupons/[^/]+", P.CouponUpdateParams),
    ("DELETE", r"/v1/coupons/[^/]+", P.CouponDeleteParams),
    ("POST", r"/v1/promotion_codes", P.PromotionCodeCreateParams),
    ("GET", r"/v1/promotion_codes", P.PromotionCodeListParams),
    ("GET", r"/v1/promotion_codes/[^/]+", P.PromotionCodeRetrieveParams),
    ("POST", r"/v1/promotion_codes/[^/]+", P.PromotionCodeUpdateParams),
    ("POST", r"/v1/entitlements/features", PE.FeatureCreateParams),
    ("GET", r"/v1/entitlements/features", PE.FeatureListParams),
    ("GET", r"/v1/entitlements/features/[^/]+", PE.FeatureRetrieveParams),
    ("POST", r"/v1/entitlements/features/[^/]+", PE.FeatureUpdateParams),
    ("GET", r"/v1/entitlements/active_entitlements", PE.ActiveEntitlementListParams),
    ("POST", r"/v1/products/[^/]+/features", P.ProductCreateFeatureParams),
    ("GET", r"/v1/products/[^/]+/features", P.ProductListFeaturesParams),
    ("GET", r"/v1/products/[^/]+/features/[^/]+", P.ProductRetrieveFeatureParams),
    ("DELETE", r"/v1/products/[^/]+/features/[^/]+", P.ProductDeleteFeatureParams),
    ("POST", r"/v1/checkout/sessions", PC.SessionCreateParams),
    ("GET", r"/v1/checkout/sessions/[^/]+", PC.SessionRetrieveParams),
    ("POST", r"/v1/billing_portal/sessions", PBP.SessionCreateParams),
]


class ParamError(Exception):
    def __init__(self, param, message, code):
        super().__init__(message)
        self.param, self.message, self.code = param, message, code


# ---------------------------------------------------------------- the SDK's types as specs
# A spec is one of: ("scalar", type), ("enum", values), ("list", spec), ("map", spec),
# ("object", {key: spec}, required keys), ("any",); with "emptyable" when "" is accepted (unsets).

_CACHE = {}


def _namespace(cls):
    ns = dict(vars(typing))
    ns.update(vars(typing_extensions))
    ns.update(vars(sys.modules[cls.__module__]))
    return ns


def _resolve(tp, ns):
    if isinstance(tp, str):
        return eval(tp, ns)  # noqa: S307 - annotations of the installed SDK
    if isinstance(tp, typing.ForwardRef):
        return eval(tp.__forward_arg__, ns)  # noqa: S307
    return tp


def _spec(tp, ns):
    """(spec, emptyable) for an annotation."""
    tp = _resolve(tp, ns)
    origin = typing.get_origin(tp)
    if origin in (typing_extensions.NotRequired, typing_extensions.Required):
        return _spec(typing.get_args(tp)[0], ns)
    if origin in (typing.Union, types.UnionType):
        members = [_resolve(a, ns) for a in typing.get_args(tp)]
        members = [m for m in members if getattr(typing.get_origin(m), "__name__", "") != "UntypedStripeObject"
                   and getattr(m, "__name__", "") != "UntypedStripeObject"]
        literals = [v for m in members if typing.get_origin(m) is typing.Literal for v in typing.get_args(m)]
        rest = [m for m in members if typing.get_origin(m) is not typing.Literal]
        emptyable = "" in literals
        values = [v for v in literals if v != ""]
        if values:  # Literal[...] | str: the values this API version knows
            return ("enum", tuple(values)), emptyable
        if len(rest) == 1:
            return _spec(rest[0], ns)[0], emptyable
        return ("any",), emptyable
    if origin is typing.Literal:
        values = typing.get_args(tp)
        return ("enum", tuple(v for v in values if v != "")), "" in values
    if origin in (list, typing.List):
        return ("list", _spec(typing.get_args(tp)[0], ns)), False
    if origin in (dict, typing.Dict):
        return ("map", _spec(typing.get_args(tp)[1], ns)), False
    if typing_extensions.is_typeddict(tp):
        return _object(tp), False
    if tp in (str, int, bool, float, decimal.Decimal):
        return ("scalar", tp), False
    return ("any",), False


def _object(cls):
    if cls not in _CACHE:
        ns = _namespace(cls)
        fields = {}
        for base in reversed(cls.__mro__):
            if base is RequestOptions:
                continue
            for key, tp in getattr(base, "__annotations__", {}).items():
                if key not in _OPTIONS:
                    fields[key] = tp
        _CACHE[cls] = ("object", None, frozenset(cls.__required_keys__ - _OPTIONS))  # recursion guard
        _CACHE[cls] = ("object", {k: _spec(tp, ns) for k, tp in fields.items()},
                       frozenset(cls.__required_keys__ - _OPTIONS))
    return _CACHE[cls]


def params_class(method, path):
    for m, pattern, cls in ROUTES:
        if m == method and re.fullmatch(pattern, path):
            return cls
    return None


# ---------------------------------------------------------------- validation of a decoded form


def _name(prefix, key):
    return "%s[%s]" % (prefix, key) if prefix else key


def validate(cls, data):
    """Check decoded form data (strings, dicts, lists as dicts keyed by index) against an SDK params class."""
    _check_object(_object(cls), data, "")


def _check_object(spec, data, prefix):
    fields, required = spec[1], spec[2]
    for key, value in data.items():
        name = _name(prefix, key)
        if key not in fields:
            raise ParamError(name, "Received unknown parameter: %s" % name, "parameter_unknown")
        _check(fields[key], value, name)
    for key in sorted(required):
        if data.get(key) in (None, "", {}):
            name = _name(prefix, key)
            raise ParamError(name, "Missing required param: %s." % name, "parameter_missing")


def _check(field, value, name):
    spec, emptyable = field
    if value == "":
        if emptyable or spec[0] == "any":
            return
        raise ParamError(name, "You passed an empty string for '%s'. We assume empty values are an attempt to unset "
                               "a parameter; however '%s' cannot be unset. You should remove '%s' from your request or "
                               "supply a non-empty value." % (name, name, name), "parameter_invalid_empty")
    kind = spec[0]
    if kind == "any":
        return
    if kind == "object":
        if not isinstance(value, dict):
            raise ParamError(name, "Invalid object", "parameter_invalid_object")
        return _check_object(spec, value, name)
    if kind == "list":
        if not isinstance(value, dict) or not all(k.isdigit() for k in value):
            raise ParamError(name, "Invalid array", "parameter_invalid_array")
        for k in sorted(value, key=int):
            _check((spec[1][0], spec[1][1]), value[k], "%s[%s]" % (name, k))
        return
    if kind == "map":
        if not isinstance(value, dict):
            raise ParamError(name, "Invalid object", "parameter_invalid_object")
        for k, v in value.items():
            _check((spec[1][0], True), v, _name(name, k))
        return
    if isinstance(value, dict):
        raise ParamError(name, "Invalid %s: must be a string, not a hash" % name, "parameter_invalid_string")
    if kind == "enum":
        if value not in spec[1]:
            raise ParamError(name, "Invalid %s: must be one of %s" % (name, ", ".join(spec[1])), "parameter_invalid_enum")
        return
    tp = spec[1]
    if tp is bool and value not in ("true", "false"):
        raise ParamError(name, "Invalid boolean: %s" % value, "parameter_invalid_boolean")
    if tp is int and not re.fullmatch(r"-?\d+", value):
        raise ParamError(name, "Invalid integer: %s" % value, "parameter_invalid_integer")
    if tp in (float, decimal.Decimal) and not re.fullmatch(r"-?\d+(\.\d+)?", value):
        raise ParamError(name, "Invalid decimal: %s" % value, "parameter_invalid_decimal")


def known_values(cls, *path):
    """The enum values the SDK lists for a (nested) parameter, e.g. known_values(WebhookEndpointCreateParams,
    "enabled_events")."""
    spec = _object(cls)
    for key in path:
        spec = spec[1][key][0]
        while spec[0] == "list":
            spec = spec[1][0]
    return spec[1]
