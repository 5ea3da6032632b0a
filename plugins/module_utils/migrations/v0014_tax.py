# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0014: tax in the billing mirrors.

An invoice's mirror gains its tax (the sum of Stripe's total_taxes) and its total before tax; a customer's mirror
gains its billing address, tax status (none, exempt, reverse), where Stripe Tax places it (supported,
not_collecting, unrecognized_location, failed) and its tax IDs, which the application may set through Checkout or
the Customer Portal as well as tenant_subscription. The webhook receiver asks Stripe for a customer with its tax and
tax IDs expanded; a customer read without them keeps what was mirrored. stripe_event_apply is replaced by the
0013 function with those columns added; no new table, function or role."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

from ansible_collections.selfbase.platform.plugins.module_utils.migrations import v0013_mrr_history as _v0013

VERSION = "0014"
NAME = "tax"

_EDITS = [
    # invoices: tax and the total before it
    ("amount_due, amount_paid, amount_remaining, total, attempt_count,",
     "amount_due, amount_paid, amount_remaining, total, tax, total_excluding_tax, attempt_count,"),
    ("(p_object ->> 'amount_remaining')::pg_catalog.int8, (p_object ->> 'total')::pg_catalog.int8,\n",
     "(p_object ->> 'amount_remaining')::pg_catalog.int8, (p_object ->> 'total')::pg_catalog.int8,\n"
     "                (SELECT COALESCE(pg_catalog.sum((x ->> 'amount')::pg_catalog.int8), 0)::pg_catalog.int8\n"
     "                   FROM pg_catalog.jsonb_array_elements(p_object -> 'total_taxes') x\n"
     "                  WHERE pg_catalog.jsonb_typeof(p_object -> 'total_taxes') = 'array'),\n"
     "                (p_object ->> 'total_excluding_tax')::pg_catalog.int8,\n"),
    ("              total = EXCLUDED.total, attempt_count = EXCLUDED.attempt_count,",
     "              total = EXCLUDED.total, tax = EXCLUDED.tax, total_excluding_tax = EXCLUDED.total_excluding_tax,\n"
     "              attempt_count = EXCLUDED.attempt_count,"),
    # customers: address, tax status and location, tax IDs
    ("                                                           last4, delinquent, synced_at)",
     "                                                           last4, delinquent, address, tax_exempt,\n"
     "                                                           tax_location, tax_ids, synced_at)"),
    ("                COALESCE((p_object ->> 'delinquent')::pg_catalog.bool, false), pg_catalog.now())",
     "                COALESCE((p_object ->> 'delinquent')::pg_catalog.bool, false),\n"
     "                CASE WHEN pg_catalog.jsonb_typeof(p_object -> 'address') = 'object' THEN\n"
     "                  pg_catalog.jsonb_build_object(\n"
     "                    'line1', p_object #> '{address,line1}', 'line2', p_object #> '{address,line2}',\n"
     "                    'city', p_object #> '{address,city}', 'state', p_object #> '{address,state}',\n"
     "                    'postal_code', p_object #> '{address,postal_code}',\n"
     "                    'country', p_object #> '{address,country}') END,\n"
     "                p_object ->> 'tax_exempt', p_object #>> '{tax,automatic_tax}',\n"
     "                (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(\n"
     "                          'type', t ->> 'type', 'value', t ->> 'value',\n"
     "                          'verification', t #>> '{verification,status}') ORDER BY t ->> 'type', t ->> 'value'),\n"
     "                        '[]')\n"
     "                   FROM pg_catalog.jsonb_array_elements(p_object #> '{tax_ids,data}') t\n"
     "                  WHERE pg_catalog.jsonb_typeof(p_object #> '{tax_ids,data}') = 'array'),\n"
     "                pg_catalog.now())"),
    ("              brand = EXCLUDED.brand, last4 = EXCLUDED.last4, delinquent = EXCLUDED.delinquent,",
     "              brand = EXCLUDED.brand, last4 = EXCLUDED.last4, delinquent = EXCLUDED.delinquent,\n"
     "              address = EXCLUDED.address, tax_exempt = EXCLUDED.tax_exempt,\n"
     "              -- read without its tax or tax IDs expanded: what was mirrored stays\n"
     "              tax_location = COALESCE(EXCLUDED.tax_location, c.tax_location),\n"
     "              tax_ids = CASE WHEN pg_catalog.jsonb_typeof(p_object #> '{tax_ids,data}') = 'array'\n"
     "                             THEN EXCLUDED.tax_ids ELSE c.tax_ids END,"),
]


def _event_apply():
    body = _v0013._event_apply()
    for old, new in _EDITS:
        if body.count(old) != 1:
            raise ValueError('migration 0014: the anchor %r in stripe_event_apply moved' % old)
        body = body.replace(old, new)
    return body


SQL = r"""
-- selfbase platform schema, version 0014: tax in the invoice and customer mirrors.
SET LOCAL ROLE selfbase_owner;
ALTER TABLE platform.invoices
  ADD COLUMN tax bigint,
  ADD COLUMN total_excluding_tax bigint;
ALTER TABLE platform.customer_payment_state
  ADD COLUMN address jsonb CHECK (address IS NULL OR pg_catalog.jsonb_typeof(address) = 'object'),
  ADD COLUMN tax_exempt text CHECK (tax_exempt IN ('none', 'exempt', 'reverse')),
  ADD COLUMN tax_location text
    CHECK (tax_location IN ('supported', 'not_collecting', 'unrecognized_location', 'failed')),
  ADD COLUMN tax_ids jsonb NOT NULL DEFAULT '[]' CHECK (pg_catalog.jsonb_typeof(tax_ids) = 'array');
RESET ROLE;

""" + _event_apply()
