# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stripe access for the selfbase.platform modules: connection options and a
small client over the official ``stripe`` library (pinned API version, retries,
idempotency keys derived from the desired state, paginated lists).

Idempotency keys. Stripe stores the first answer to a key for at least 24 hours,
errors included (a 500 too), and replays it. A key here is derived from the path
and the parameters, so a run retried after a crash resends the same key and gets
the stored success instead of a duplicate, and a changed payload gets another
key. When Stripe replays a stored error, the write is sent again under the next
key of a chain derived from the first (key, then H(key), ...), so an old error
does not block later runs and a crash-retry still finds the same keys."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import hashlib
import json
import traceback

from ansible.module_utils.basic import env_fallback, missing_required_lib
from ansible_collections.selfbase.platform.plugins.module_utils.errors import ServiceError
from ansible_collections.selfbase.platform.plugins.module_utils.stripe_http import retrying_http_client

try:
    import stripe
    HAS_STRIPE = True
    STRIPE_IMPORT_ERROR = None
except ImportError:  # reported through fail_json by StripeClient()
    HAS_STRIPE = False
    STRIPE_IMPORT_ERROR = traceback.format_exc()

# Pinned, so that object shapes do not change under the modules (usage-based
# billing on Billing Meters needs 2025-03-31.basil or later; subscription
# period dates live on the subscription items since then).
STRIPE_API_VERSION = '2026-10-28.endive'
DEFAULT_API_BASE = 'https://api.stripe.com'


def stripe_argument_spec():
    """Options documented in the selfbase.platform.stripe doc fragment."""
    return dict(
        api_key=dict(type='str', required=True, no_log=True, fallback=(env_fallback, ['STRIPE_API_KEY'])),
        api_base=dict(type='str', default=DEFAULT_API_BASE, fallback=(env_fallback, ['STRIPE_API_BASE'])),
        request_timeout=dict(type='int', default=30),
        max_retries=dict(type='int', default=3),
    )


# Replayed errors skipped, one key of the chain each, before a write gives up.
MAX_REPLAYED_ERRORS = 5


def idempotency_key(*parts):
    """A stable Idempotency-Key for a write, derived from the desired state, so
    that a run retried after a crash sends the same key again."""
    blob = json.dumps(parts, sort_keys=True, separators=(',', ':'), default=str)
    return 'selfbase-' + hashlib.sha256(blob.encode('utf-8')).hexdigest()[:48]


def sdk_values(params, field):
    """The values the pinned API version knows for ``field`` of the request class ``params`` (a list of, or a
    string open to, a Literal), from the typed parameters of the installed ``stripe`` library; None when the
    library does not carry them."""
    try:
        from stripe import params as sdk
        import typing
        listed = typing.get_args(getattr(sdk, params).__annotations__[field])[0]
        return frozenset(typing.get_args(listed)) or None
    except (ImportError, AttributeError, KeyError, IndexError, TypeError):
        return None


def event_types():
    """The event types a webhook endpoint can subscribe to (``*`` included), or None."""
    return sdk_values('WebhookEndpointCreateParams', 'enabled_events')


class StripeError(ServiceError):
    """A failed Stripe call: HTTP status (None when Stripe was not reached), error code and type, and the
    parameter Stripe blamed."""

    def __init__(self, message, status=None, code=None, param=None, type=None, replayed=False):
        super(StripeError, self).__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.param = param
        self.type = type
        # Stripe answered with an error stored under this idempotency key by an earlier request
        self.replayed = replayed

    def __str__(self):
        head = 'Stripe error' if self.status is None else 'Stripe error %s' % self.status
        fields = (('type', self.type), ('code', self.code), ('param', self.param))
        detail = ', '.join('%s %s' % (k, v) for k, v in fields if v)
        return '%s%s: %s' % (head, ' (%s)' % detail if detail else '', self.message)


def _convert(err, api_base):
    if isinstance(err, stripe.APIConnectionError):
        return StripeError('could not reach Stripe at %s: %s' % (api_base, (err.user_message or '').strip()))
    body = err.json_body if isinstance(err.json_body, dict) else {}
    info = body.get('error') if isinstance(body.get('error'), dict) else {}
    headers = dict((str(k).lower(), str(v).lower()) for k, v in (err.headers or {}).items())
    return StripeError(info.get('message') or err.user_message or str(err), status=err.http_status,
                       code=info.get('code') or err.code, param=info.get('param'), type=info.get('type'),
                       replayed=headers.get('idempotent-replayed') == 'true')


class StripeClient(object):
    """Stripe v1 calls for one module run. ``reads`` and ``writes`` count the
    calls made (each list page is one read; retries inside a call are not
    counted again)."""

    def __init__(self, module):
        if not HAS_STRIPE:
            module.fail_json(msg=missing_required_lib('stripe'), exception=STRIPE_IMPORT_ERROR)
        p = module.params
        if not p['api_key']:
            module.fail_json(msg='api_key is empty: set the option or STRIPE_API_KEY.')
        base = (p['api_base'] or '').rstrip('/')
        if not base.startswith(('https://', 'http://')):
            module.fail_json(msg='api_base must be an http(s) URL, got %r.' % p['api_base'])
        if p['request_timeout'] <= 0:
            module.fail_json(msg='request_timeout must be a positive number of seconds.')
        if p['max_retries'] < 0:
            module.fail_json(msg='max_retries must be 0 or more.')
        self.module = module
        self.api_base = base
        self.reads = 0
        self.writes = 0
        self._client = stripe.StripeClient(
            p['api_key'], stripe_version=STRIPE_API_VERSION, base_addresses={'api': base},
            max_network_retries=p['max_retries'], http_client=retrying_http_client(p['request_timeout']))

    def _call(self, method, path, params, key=None):
        kwargs = dict(params or {})
        if key:
            kwargs['idempotency_key'] = key
        try:
            return self._client.raw_request(method, path, **kwargs)
        except stripe.StripeError as e:
            raise _convert(e, self.api_base)

    def counts(self):
        """The module's api_calls result: Stripe reads and writes made so far."""
        return dict(reads=self.reads, writes=self.writes)

    def get(self, path, params=None):
        self.reads += 1
        return self._call('get', path, params).data

    def list(self, path, params=None):
        """Every object of a list (or search) endpoint, following the pages 100 at a time."""
        params = dict(params or {})
        params.setdefault('limit', 100)
        items = []
        while True:
            page = self.get(path, params)
            items.extend(page.get('data') or [])
            if not page.get('has_more') or not page.get('data'):
                return items
            if page.get('object') == 'search_result':
                params['page'] = page['next_page']
            else:
                params['starting_after'] = page['data'][-1]['id']

    def _refuse_in_check_mode(self, method, path):
        if self.module.check_mode:
            raise StripeError('internal error: %s %s attempted in check mode' % (method, path))

    def post(self, path, params, key=None):
        """A write. The Idempotency-Key is ``key`` or derived from path and params; the library resends the
        same key on every retry, so a write that Stripe stored before an error is replayed, not repeated.
        An error that Stripe replays from an earlier request moves the write on to the next key of the chain."""
        self._refuse_in_check_mode('POST', path)
        key = key or idempotency_key(path, params)
        last = None
        for _skipped in range(MAX_REPLAYED_ERRORS + 1):
            self.writes += 1
            try:
                resp = self._call('post', path, params, key)
                break
            except StripeError as e:
                if not e.replayed:
                    raise
                last = e
                key = idempotency_key(key)
        else:
            raise StripeError('%d idempotency keys in a row replayed errors stored by earlier requests for %s; '
                              'the last one: %s' % (MAX_REPLAYED_ERRORS + 1, path, last.message), last.status,
                              last.code, last.param, last.type)
        data = resp.data
        if str(resp.headers.get('idempotent-replayed', '')).lower() == 'true':
            stale, fresh = self._stale(path, data)
            if stale:
                # A replay from an earlier run whose result no longer holds (the object was
                # deleted or changed since, within Stripe's 24 h key retention): write again,
                # with a key derived from the live state, so a crash-retry still reuses it.
                self.writes += 1
                data = self._call('post', path, params, idempotency_key(key, data.get('id'), fresh)).data
        return data

    def _stale(self, path, data):
        """(stale, live object or None) for a replayed write result."""
        if not isinstance(data, dict) or not data.get('id'):
            return False, None
        oid = data['id']
        at = path.find('/' + oid)
        created = at < 0
        obj_path = path.rstrip('/') + '/' + oid if created else path[:at + len(oid) + 1]
        try:
            fresh = self.get(obj_path)
        except StripeError as e:
            if e.status == 404:
                return True, None
            raise
        if created:
            return bool(fresh.get('deleted')), fresh
        return fresh != data, fresh

    def delete(self, path, params=None, key=None):
        self._refuse_in_check_mode('DELETE', path)
        self.writes += 1
        return self._call('delete', path, params, key).data
