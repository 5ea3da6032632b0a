# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Stripe SDK's HTTP client as the modules and the billing service both use it.

Shared with a host service: no Ansible imports. The host_services role installs it on the billing host under
this same package path, so that both import it by one name (see CONTRIBUTING, "Where code goes")."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

try:
    import stripe
except ImportError:  # the caller reports it
    stripe = None


def retrying_http_client(timeout):
    """The SDK's HTTP client, retrying 429 too."""
    class RetryingRequestsClient(stripe.RequestsClient):
        """The library retries connection errors, 409 and 5xx with capped
        exponential backoff and honours Stripe-Should-Retry; it does not retry
        429 unless told to. Rate limits are transient, so retry them too."""

        def _should_retry(self, response, api_connection_error, num_retries, max_network_retries):
            if response is not None and num_retries < (max_network_retries or 0):
                headers = response[2] or {}
                told = str(headers.get('stripe-should-retry', headers.get('Stripe-Should-Retry', ''))).lower()
                if response[1] == 429 and told != 'false':
                    return True
            return super(RetryingRequestsClient, self)._should_retry(
                response, api_connection_error, num_retries, max_network_retries)

    return RetryingRequestsClient(timeout=timeout)
