# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migration 0002: billing (trial length of plans, metered overage prices, subscription mirror details)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

VERSION = "0002"
NAME = "billing"
SQL = r"""
-- selfbase platform schema, version 0002: what billing_plan and
-- tenant_subscription keep besides the columns of 0001.
SET LOCAL ROLE selfbase_owner;
SET LOCAL search_path = platform, pg_catalog;

-- Trial a new subscription on the plan gets, in days (Stripe allows up to 730).
ALTER TABLE platform.plans
  ADD COLUMN trial_days integer CHECK (trial_days BETWEEN 0 AND 730);

-- The Stripe billing meter an overage quota is billed on (meter event_name = metric).
ALTER TABLE platform.plan_quotas
  ADD COLUMN stripe_meter_id text;

-- One metered Stripe price per overage quota, billing cycle and currency of the plan.
-- unit_amount_decimal is in the currency's minor unit, as Stripe takes it.
CREATE TABLE platform.plan_overage_prices (
  plan_code           text NOT NULL,
  metric              text NOT NULL,
  billing_cycle       text NOT NULL CHECK (billing_cycle IN ('month', 'year')),
  currency            text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
  unit_amount_decimal numeric(30, 12) NOT NULL CHECK (unit_amount_decimal >= 0),
  lookup_key          text UNIQUE,
  stripe_price_id     text UNIQUE,
  active              boolean NOT NULL DEFAULT true,
  PRIMARY KEY (plan_code, metric, billing_cycle, currency),
  FOREIGN KEY (plan_code, metric) REFERENCES platform.plan_quotas (plan_code, metric)
    ON UPDATE CASCADE ON DELETE CASCADE
);

-- The subscription mirror: what Stripe reports, as of the last module run.
ALTER TABLE platform.subscriptions
  ADD COLUMN currency             text CHECK (currency ~ '^[a-z]{3}$'),
  ADD COLUMN stripe_price_id      text,
  ADD COLUMN metered_items        jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metered_items) = 'object'),
  ADD COLUMN current_period_start timestamptz,
  ADD COLUMN trial_end            timestamptz,
  ADD COLUMN cancel_at            timestamptz,
  ADD COLUMN canceled_at          timestamptz;

-- Least privilege, as in 0001: plan data is readable by applications, written by the control plane.
REVOKE ALL ON platform.plan_overage_prices FROM PUBLIC;
GRANT SELECT ON platform.plan_overage_prices TO selfbase_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON platform.plan_overage_prices TO selfbase_admin;
"""
