# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options shared by the modules that talk to Stripe."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  api_key:
    description:
      - Stripe secret key (C(sk_live_...), C(sk_test_...)) or restricted key (C(rk_...)) with write access to the
        objects the module manages.
      - Falls back to the E(STRIPE_API_KEY) environment variable. Never logged.
    type: str
    required: true
  api_base:
    description:
      - Base URL of the Stripe API. Change it only to point at a local fake or proxy for tests and development.
      - Falls back to E(STRIPE_API_BASE).
    type: str
    default: https://api.stripe.com
  request_timeout:
    description:
      - Seconds to wait for each HTTP request to Stripe.
    type: int
    default: 30
  max_retries:
    description:
      - How many times a request is retried after a rate limit (429), a server error (5xx), a timeout or a
        connection error, with capped exponential backoff (0.5 s doubling, at most 5 s). A C(Stripe-Should-Retry)
        header from Stripe overrides the decision.
      - Writes are retried with the same C(Idempotency-Key), derived from the desired state, so a write that Stripe
        stored before the error is not made twice; a re-run after a crash sends the same key again.
      - Stripe stores the first answer to a key for 24 hours, errors included, and replays it. When it replays a
        stored error, the write is sent again under the next key of a chain derived from the first, so a 500 of an
        earlier run does not block this one.
    type: int
    default: 3
notes:
  - The Stripe API version is pinned (C(2026-10-28.endive)); requests send it in the C(Stripe-Version) header,
    whatever the account's default version is.
  - Stripe modules call Stripe's HTTP API from the host that runs them, normally the controller
    (with C(delegate_to) set to C(localhost), or in a play on C(localhost)).
requirements:
  - stripe >= 16.1 (the official Python library) on the host that runs the module
'''
