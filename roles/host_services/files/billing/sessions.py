# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checkout and Customer Portal sessions for a tenant's application (migration 0019): a WSGI application beside
the webhook receiver. The caller is a signed-in user of the tenant, with the platform's JWT (HS256, Hasura's
claims); the database says whether that user may (an owner or admin of the tenant) and which price a plan has.

    POST <prefix>checkout  {"plan": "pro", "cycle": "month", "success_url": ..., "cancel_url": ...}
    POST <prefix>checkout  {"mode": "setup", "success_url": ..., "cancel_url": ...}    (add a payment method)
    POST <prefix>portal    {"return_url": ...}
    -> 200 {"id": "cs_...", "url": "https://checkout.stripe.com/..."}; errors {"error": ..., "message": ...}

The same endpoints are Hasura Actions' handlers (billingCheckout, billingPortal): Hasura posts {"action", "input",
"session_variables"} with the caller's own headers forwarded, and the arguments in "input" are read as the body.

A host service (see CONTRIBUTING, "Where code goes"): it runs on the billing host, not inside Ansible."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import base64
import fnmatch
import functools
import hashlib
import hmac
import json
import time
import uuid

from stripe_events import psycopg, stripe  # (None when missing: the service reports it)

CLAIMS = 'https://hasura.io/jwt/claims'
MAX_BODY = 16 * 1024
LEEWAY = 30  # seconds of clock difference allowed for exp and nbf
CYCLES = ('month', 'year')
# a subscription in these states is the tenant's: a second Checkout would bill it twice
LIVE = ('incomplete', 'trialing', 'active', 'past_due', 'unpaid', 'paused')
STATUS = {400: '400 Bad Request', 401: '401 Unauthorized', 403: '403 Forbidden', 405: '405 Method Not Allowed',
          409: '409 Conflict', 413: '413 Payload Too Large'}


class Refused(Exception):
    def __init__(self, status, message):
        super(Refused, self).__init__(message)
        self.status = status


def _b64(part):
    return base64.urlsafe_b64decode(part + '=' * (-len(part) % 4))


def verify_jwt(token, keys, now=None):
    """The Hasura claims of an HS256 token signed with one of ``keys``, unexpired; Refused(401) otherwise."""
    now = time.time() if now is None else now
    try:
        head, body, sig = token.split('.')
        header, claims = json.loads(_b64(head)), json.loads(_b64(body))
        signature = _b64(sig)
    except (ValueError, TypeError, AttributeError):
        raise Refused(401, 'the bearer token is not a JWT')
    if not isinstance(header, dict) or header.get('alg') != 'HS256':
        raise Refused(401, 'the token is not signed with HS256')
    signed = ('%s.%s' % (head, body)).encode('ascii')
    if not any(hmac.compare_digest(hmac.new(k.encode('utf-8'), signed, hashlib.sha256).digest(), signature)
               for k in keys):
        raise Refused(401, 'the token\'s signature is not the platform\'s')
    if not isinstance(claims, dict) or not isinstance(claims.get('exp'), (int, float)) or claims['exp'] + LEEWAY < now:
        raise Refused(401, 'the token has expired')
    if isinstance(claims.get('nbf'), (int, float)) and claims['nbf'] - LEEWAY > now:
        raise Refused(401, 'the token is not valid yet')
    ns = claims.get(CLAIMS)
    if not isinstance(ns, dict):
        raise Refused(401, 'the token carries no Hasura claims')
    try:
        return {'user': str(uuid.UUID(str(ns.get('x-hasura-user-id')))),
                'tenant': str(uuid.UUID(str(ns.get('x-hasura-tenant-id'))))}
    except ValueError:
        raise Refused(401, 'the token names no user or tenant (x-hasura-user-id, x-hasura-tenant-id)')


def allowed_url(url, hosts):
    """An https URL whose host is one of ``hosts`` (patterns such as *.example.com)."""
    if not isinstance(url, str) or not url.startswith('https://') or len(url) > 2048:
        return False
    host = url[len('https://'):].split('/', 1)[0].split('?', 1)[0].split('#', 1)[0]
    if '@' in host:
        return False
    host = host.rsplit(':', 1)[0] if host.count(':') == 1 else host
    return any(fnmatch.fnmatchcase(host.lower(), h.lower()) for h in hosts)


def parse(kind, body, hosts, currency):
    """The request's fields, checked before anything is asked of the database or Stripe; Refused(400) naming
    the field otherwise."""
    if not isinstance(body, dict):
        raise Refused(400, 'the body must be a JSON object')
    urls = ('return_url',) if kind == 'portal' else ('success_url', 'cancel_url')
    known = set(urls) | ({'mode', 'plan', 'cycle', 'currency'} if kind == 'checkout' else set())
    unknown = sorted(set(body) - known)
    if unknown:
        raise Refused(400, '%s: unknown field' % unknown[0])
    for k in urls:
        if not allowed_url(body.get(k), hosts):
            raise Refused(400, '%s: an https URL on one of the platform\'s hosts (%s)' % (k, ', '.join(hosts)))
    out = dict((k, body[k]) for k in urls)
    if kind == 'portal':
        return out
    mode = body.get('mode', 'subscription')
    if mode not in ('subscription', 'setup'):
        raise Refused(400, 'mode: subscription (a plan) or setup (a payment method)')
    out.update(mode=mode, currency=body.get('currency', currency))
    if not isinstance(out['currency'], str) or len(out['currency']) != 3 or not out['currency'].islower():
        raise Refused(400, 'currency: a lower-case ISO 4217 code such as usd')
    if mode == 'setup':
        for k in ('plan', 'cycle'):
            if k in body:
                raise Refused(400, '%s: not with mode setup' % k)
        return out
    if not isinstance(body.get('plan'), str) or not body['plan']:
        raise Refused(400, 'plan: the code of the plan to subscribe to')
    out.update(plan=body['plan'], cycle=body.get('cycle', 'month'))
    if out['cycle'] not in CYCLES:
        raise Refused(400, 'cycle: month or year')
    return out


class Sessions(object):
    """POST <prefix>checkout and <prefix>portal. 401 without a valid token, 403 for a user who is not an owner or
    admin of the token's tenant, 400 naming the field, 409 when the tenant's state does not allow the session,
    502 when Stripe refuses, 503 when the database or Stripe cannot be reached."""

    def __init__(self, connect, api, config, log=None):
        self.connect, self.api, self.log = connect, api, log or (lambda msg: None)
        self.keys = list(config['jwt_keys'])
        self.hosts = list(config['return_hosts'])
        self.currency = config['currency']
        self.portal_configuration = config.get('portal_configuration') or None

    def _cors(self, environ):
        """A browser application on one of the return hosts may call from its own origin (CORS)."""
        origin = environ.get('HTTP_ORIGIN') or ''
        if not allowed_url(origin + '/', self.hosts):
            return [('Vary', 'Origin')]
        return [('Access-Control-Allow-Origin', origin), ('Vary', 'Origin')]

    def _answer(self, start_response, status, body, environ=None):
        data = json.dumps(body).encode('utf-8')
        start_response(status, [('Content-Type', 'application/json'), ('Content-Length', str(len(data))),
                                ('Cache-Control', 'no-store')] + self._cors(environ or {}))
        return [data]

    def __call__(self, environ, start_response, kind):
        if environ.get('REQUEST_METHOD') == 'OPTIONS':  # a browser's preflight
            start_response('204 No Content', self._cors(environ) + [
                ('Access-Control-Allow-Methods', 'POST'), ('Access-Control-Allow-Headers', 'Authorization, Content-Type'),
                ('Access-Control-Max-Age', '600'), ('Content-Length', '0')])
            return [b'']
        answer = functools.partial(self._answer, start_response, environ=environ)

        def fail(status, message):  # "message" is what a Hasura Action's caller is shown
            return answer(status, {'error': message, 'message': message})
        try:
            if environ.get('REQUEST_METHOD') != 'POST':
                raise Refused(405, 'POST only')
            auth = environ.get('HTTP_AUTHORIZATION') or ''
            if not auth.startswith('Bearer '):
                raise Refused(401, 'an Authorization: Bearer <JWT> header is required')
            who = verify_jwt(auth[len('Bearer '):].strip(), self.keys)
            try:
                length = int(environ.get('CONTENT_LENGTH') or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                raise Refused(413, 'body too large')
            try:
                body = json.loads(environ['wsgi.input'].read(length) or b'{}')
            except ValueError:
                raise Refused(400, 'the body is not JSON')
            if isinstance(body, dict) and isinstance(body.get('action'), dict) and isinstance(body.get('input'), dict):
                # a Hasura Action (forward_client_headers: the caller's token above): its arguments, unset ones left out
                body = dict((k, v) for k, v in body['input'].items() if v is not None)
            req = parse(kind, body, self.hosts, self.currency)
            session = self._session(kind, who, req)
        except Refused as e:
            return fail(STATUS[e.status], str(e))
        except psycopg.Error as e:
            self.log('billing session not opened, the database failed: %s' % str(e).strip())
            return fail('503 Service Unavailable', 'database unavailable')
        except stripe.StripeError as e:
            status = getattr(e, 'http_status', None)
            self.log('billing session not opened, Stripe answered %s: %s' % (status, e))
            if status is None or status >= 500 or status == 429:
                return fail('503 Service Unavailable', 'stripe unavailable')
            return fail('502 Bad Gateway', 'Stripe refused the session: %s' % (getattr(e, 'user_message', None) or e))
        self.log('billing %s session %s for tenant %s by user %s' % (kind, session['id'], who['tenant'], who['user']))
        return answer('200 OK', {'id': session['id'], 'url': session['url']})

    def _context(self, who, req):
        with self.connect() as conn:
            try:
                row = conn.execute('SELECT platform.billing_session_context(%s, %s, %s, %s, %s) AS c',
                                   (who['tenant'], who['user'], req.get('plan'), req.get('cycle'),
                                    req.get('currency'))).fetchone()
            except psycopg.errors.InsufficientPrivilege:
                raise Refused(403, 'billing sessions are for an owner or admin of the tenant')
        return row['c']  # (stripe_events.connect: rows as dicts)

    def _customer(self, ctx):
        """The tenant's Stripe customer: created and recorded when it has none. The idempotency key is the
        tenant's, so that concurrent or retried requests create one customer (tenant_subscription finds it by
        metadata.tenant_id)."""
        if ctx['customer']:
            return ctx['customer']
        created = self.api.post('/v1/customers', {
            'name': ctx['slug'], 'metadata': {'tenant_id': ctx['tenant_id'], 'tenant_slug': ctx['slug']}},
            'selfbase-session-customer-%s' % ctx['tenant_id'])
        with self.connect() as conn:
            row = conn.execute('SELECT platform.billing_link_customer(%s, %s) AS c',
                               (ctx['tenant_id'], created['id'])).fetchone()
        return row['c']

    def _session(self, kind, who, req):
        ctx = self._context(who, req)
        sub = ctx.get('subscription') or {}
        meta = {'tenant_id': ctx['tenant_id'], 'tenant_slug': ctx['slug'], 'requested_by': who['user']}
        if kind == 'portal':
            if not ctx['customer']:
                raise Refused(409, 'the tenant has no billing account yet: subscribe through checkout first')
            params = {'customer': ctx['customer'], 'return_url': req['return_url']}
            if self.portal_configuration:
                params['configuration'] = self.portal_configuration
            return self.api.post('/v1/billing_portal/sessions', params, str(uuid.uuid4()))
        if req['mode'] == 'subscription':
            if not ctx['price']:
                raise Refused(400, 'plan: %s has no active %sly price in %s'
                              % (req['plan'], req['cycle'], req['currency']))
            if sub.get('status') in LIVE:
                raise Refused(409, 'the tenant already has a subscription (%s, plan %s): change plans in the '
                                   'portal' % (sub['status'], sub.get('plan')))
        customer = self._customer(ctx)
        params = {'mode': req['mode'], 'customer': customer, 'client_reference_id': ctx['tenant_id'],
                  'success_url': req['success_url'], 'cancel_url': req['cancel_url'], 'metadata': meta}
        if req['mode'] == 'subscription':
            # metered prices take no quantity: Stripe counts their usage
            params['line_items'] = [{'price': ctx['price'], 'quantity': 1}] + [
                {'price': p} for p in ctx['metered_prices']]
            params['metadata'] = dict(meta, plan_code=req['plan'], billing_cycle=req['cycle'])
            params['subscription_data'] = {'metadata': {'tenant_id': ctx['tenant_id'], 'tenant_slug': ctx['slug']}}
            if ctx['trial_days'] and not sub:  # the plan's trial, for a tenant's first subscription
                params['subscription_data']['trial_period_days'] = ctx['trial_days']
        else:
            params['currency'] = req['currency']
        return self.api.post('/v1/checkout/sessions', params, str(uuid.uuid4()))
