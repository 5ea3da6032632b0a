# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stripe events into the platform database: signature checks, the re-fetch of the object an event is about,
and the apply through the schema's billing functions (migration 0006), with the ledger row and the effect in one
transaction. Used by the webhook receiver (a WSGI application) and by the reconcile from /v1/events.

A host service (see CONTRIBUTING, "Where code goes"): it runs on the billing host, not inside Ansible."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import concurrent.futures
import json
import threading
import time
import uuid

try:
    import psycopg
    from psycopg.rows import dict_row
    from psycopg.types.json import Jsonb
except ImportError:  # the caller reports it
    psycopg = None

try:
    import stripe
except ImportError:  # the caller reports it
    stripe = None

from ansible_collections.selfbase.platform.plugins.module_utils.stripe_http import retrying_http_client

MAX_BODY = 1024 * 1024  # Stripe events are far smaller; refuse anything larger before reading it
# Stripe keeps events for 30 days; meter events must be within 35 days.
EVENT_RETENTION = 30 * 86400
METER_WINDOW = 35 * 86400 - 3600  # an hour of margin for the calls themselves
# Stripe keeps a meter event's identifier, and an idempotency key, for 24 hours: an hour of margin
DEDUP_WINDOW = 23 * 3600
SUMMARY = 'entitlements.active_entitlement_summary'
ACTIVE_ENTITLEMENTS = '/v1/entitlements/active_entitlements'
# a subscription with its discount's coupon, for the mirror and MRR; a customer with where Stripe Tax places it and
# its tax IDs, for the mirror (migration 0014)
SUBSCRIPTION_EXPAND = {'expand': ['discounts.source.coupon']}
CUSTOMER_EXPAND = {'expand': ['invoice_settings.default_payment_method', 'tax', 'tax_ids']}


class SignatureError(Exception):
    pass


def verify(payload, header, secrets, tolerance=300):
    """The event of a delivery whose Stripe-Signature matches one of ``secrets`` (two during a rotation)
    within ``tolerance`` seconds, as a dict. Raises SignatureError otherwise."""
    stamp = [p[2:] for p in (header or '').split(',') if p.startswith('t=')]
    if stamp and stamp[0].isdigit() and int(stamp[0]) > time.time() + tolerance:
        # the SDK only refuses old timestamps; one from the future would stay replayable for longer
        raise SignatureError('the signature timestamp is in the future')
    last = None
    for secret in [s for s in secrets if s]:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance)
        except stripe.SignatureVerificationError as e:
            last = e
            continue
        try:
            event = json.loads(payload)
        except ValueError:
            raise SignatureError('the body is not JSON')
        if not isinstance(event, dict) or not str(event.get('id', '')).startswith('evt_') or 'type' not in event:
            raise SignatureError('the body is not a Stripe event')
        return event
    raise SignatureError(str(last) if last else 'no signing secret is configured')


def object_ref(event):
    """(object id, API path, params) of the object whose current state an event changes, or None."""
    data = event.get('data') or {}
    obj = data.get('object') or {}
    kind = obj.get('object')
    if kind == 'subscription':  # with its discount's coupon, for the mirror and MRR
        return obj['id'], '/v1/subscriptions/%s' % obj['id'], SUBSCRIPTION_EXPAND
    if kind == 'invoice' and obj.get('id'):  # invoice.upcoming has no id: nothing to mirror
        return obj['id'], '/v1/invoices/%s' % obj['id'], {}
    if kind == 'checkout.session' and event.get('type') == 'checkout.session.completed' and obj.get('id'):
        return obj['id'], '/v1/checkout/sessions/%s' % obj['id'], {}
    if kind == SUMMARY and obj.get('customer'):  # the customer's active entitlements, every page
        return obj['customer'], ACTIVE_ENTITLEMENTS, {'customer': obj['customer'], 'limit': 100}
    customer = None
    if kind == 'customer':
        customer = obj.get('id')
    elif kind == 'payment_method':  # a detached method no longer names its customer
        customer = obj.get('customer') or (data.get('previous_attributes') or {}).get('customer')
    elif kind == 'tax_id':  # customer.tax_id.*: the customer's tax IDs changed
        customer = obj.get('customer') or (obj.get('owner') or {}).get('customer')
    if customer:
        return customer, '/v1/customers/%s' % customer, CUSTOMER_EXPAND
    return None


class StripeApi(object):
    """Reads of current objects and of the event list, and meter events, with the SDK's retries (connection
    errors, 409, 429 and 5xx, capped exponential backoff, Stripe-Should-Retry honoured)."""

    def __init__(self, api_key, api_base, api_version, timeout=20, retries=3):
        self.base, self.timeout, self.retries = api_base.rstrip('/'), timeout, retries
        self.client = stripe.StripeClient(
            api_key, stripe_version=api_version, base_addresses=self._bases(),
            max_network_retries=retries, http_client=retrying_http_client(timeout))
        self.calls = 0
        self.stream, self.stream_expires = None, 0
        self.lock = threading.Lock()

    def _bases(self):
        # Stripe's own API keeps the meter event stream on its own host; anything else (a fake) serves both
        return {'api': self.base} if self.base == 'https://api.stripe.com' else {'api': self.base,
                                                                                 'meter_events': self.base}

    def stream_events(self, events):
        """Up to 100 meter events on the v2 stream, under a meter event session (renewed before its 15 minutes
        end). Stripe validates them later: refusals only appear in its meter error reports."""
        with self.lock:
            if self.stream is None or time.time() > self.stream_expires:
                self.calls += 1
                session = self.client.v2.billing.meter_event_session.create()
                self.stream = stripe.StripeClient(
                    session.authentication_token, base_addresses=self._bases(), max_network_retries=self.retries,
                    http_client=retrying_http_client(self.timeout))
                self.stream_expires = time.time() + 600
            client = self.stream
            self.calls += 1
        try:
            client.v2.billing.meter_event_stream.create({'events': events})
        except stripe.TemporarySessionExpiredError:
            with self.lock:  # Stripe ended the session early: the next call opens another
                self.stream_expires = 0
            raise

    def get(self, path, params=None):
        """The object at ``path`` (a list with every page), or None when Stripe no longer has it (404)."""
        params = dict(params or {})
        self.calls += 1
        try:
            data = self.client.raw_request('get', path, **params).data
        except stripe.InvalidRequestError as e:
            if e.http_status == 404:
                return None
            raise
        while data.get('object') == 'list' and data.get('has_more') and data.get('data'):
            self.calls += 1
            params['starting_after'] = data['data'][-1]['id']
            page = self.client.raw_request('get', path, **params).data
            data['data'].extend(page['data'])
            data['has_more'] = page.get('has_more')
        return data

    def v2_events(self, types, created_gte):
        """Stripe's v2 events of these types created at or after ``created_gte`` (epoch seconds), every page."""
        params = {'types': types, 'created': {'gte': time.strftime('%Y-%m-%dT%H:%M:%S.000Z',
                                                                   time.gmtime(created_gte))}, 'limit': 100}
        path = '/v2/core/events'
        while path:
            self.calls += 1
            page = self.client.raw_request('get', path, **params).data
            yield from page['data']
            path, params = page.get('next_page_url'), {}

    def post(self, path, params, idempotency_key):
        self.calls += 1
        return self.client.raw_request('post', path, idempotency_key=idempotency_key, **params).data

    def events_since(self, created_gte):
        """Every event created at or after ``created_gte`` (epoch seconds), oldest first."""
        params = {'limit': 100, 'created': {'gte': int(created_gte)}}
        events = []
        while True:
            self.calls += 1
            page = self.client.raw_request('get', '/v1/events', **params).data
            events.extend(page['data'])
            if not page.get('has_more') or not page['data']:
                break
            params['starting_after'] = page['data'][-1]['id']
        events.sort(key=lambda e: (e['created'], e['id']))
        return events


def apply_event(conn, reader, event, source):
    """Take one event, exactly once: the ledger row, the re-fetched object's state and the tenant's dunning
    commit together. Returns the outcome row; outcome 'duplicate' when the event was taken before. Dunning
    follows the rules stored in platform.billing_policy, which only the control plane writes."""
    ref = object_ref(event)
    with conn.transaction():
        fresh = conn.execute(
            'SELECT platform.stripe_event_begin(%s, %s, pg_catalog.to_timestamp(%s), %s, %s, %s) AS fresh',
            (event['id'], event['type'], event['created'], bool(event.get('livemode')), ref and ref[0],
             source)).fetchone()['fresh']
        if not fresh:
            return {'outcome': 'duplicate', 'tenant': None, 'status_before': None, 'status_after': None}
        current = reader.get(ref[1], ref[2]) if ref else None
        if current is not None and current.get('object') == 'checkout.session':
            current = checkout_completed(conn, reader, current)
        if current is not None and ref[1] == ACTIVE_ENTITLEMENTS:
            # the customer's entitlements now, in the shape of the event's summary
            current = {'object': SUMMARY, 'customer': ref[0], 'entitlements': current}
        return conn.execute('SELECT * FROM platform.stripe_event_apply(%s, %s)',
                            (event['id'], Jsonb(current) if current is not None else None)).fetchone()


def checkout_completed(conn, reader, session):
    """A completed Checkout session (as Stripe has it now) names its tenant in client_reference_id: a tenant
    without a Stripe customer gets the session's (billing_link_customer(), migration 0019, never replacing one),
    and the event applies the subscription the session made (or, in setup mode, the customer), which events about
    a customer not yet linked could not."""
    tenant, customer = session.get('client_reference_id'), session.get('customer')
    if not (customer and str(customer).startswith('cus_') and _is_uuid(tenant)):
        return None
    conn.execute('SELECT platform.billing_link_customer(%s, %s)', (tenant, customer))
    if session.get('subscription'):
        return reader.get('/v1/subscriptions/%s' % session['subscription'], SUBSCRIPTION_EXPAND)
    return reader.get('/v1/customers/%s' % customer, CUSTOMER_EXPAND)


def _is_uuid(value):
    try:
        return str(uuid.UUID(str(value))) == str(value).lower()
    except ValueError:
        return False


def dunning_tick(conn):
    """Suspend the tenants whose grace period ended; returns their rows."""
    with conn.transaction():
        return conn.execute('SELECT * FROM platform.billing_dunning_tick()').fetchall()


def reconcile(conn, reader, overlap=600, now=None):
    """Replay Stripe's event list from the stored cursor (less ``overlap`` seconds, for events Stripe lists
    late), at most 30 days back. The ledger skips what was taken. Returns counts per outcome, and lost_seconds
    when the cursor was older than the 30 days Stripe lists (recorded in the platform database)."""
    now = time.time() if now is None else now
    cursor = conn.execute('SELECT extract(epoch FROM platform.stripe_sync_cursor()) AS c').fetchone()['c']
    since = max(float(cursor) - overlap if cursor is not None else 0, now - EVENT_RETENTION)
    counts = {}
    if cursor is not None and float(cursor) < now - EVENT_RETENTION:
        # Stripe no longer lists what happened between the cursor and its oldest event: recorded, and alerted on
        counts['lost_seconds'] = int(conn.execute('SELECT platform.stripe_sync_gap(pg_catalog.to_timestamp(%s)) AS g',
                                                  (now - EVENT_RETENTION,)).fetchone()['g'])
    for event in reader.events_since(since):
        outcome = apply_event(conn, reader, event, 'reconcile')['outcome']
        counts[outcome] = counts.get(outcome, 0) + 1
    conn.execute('SELECT platform.stripe_sync_cursor(pg_catalog.to_timestamp(%s))', (now,))
    return counts


METER_ERROR_TYPES = ['v1.billing.meter.error_report_triggered', 'v1.billing.meter.no_meter_found']


def read_meter_errors(conn, api, overlap=600, now=None):
    """Record Stripe's meter error reports (v2 events, listed for 30 days) from the newest recorded, less
    ``overlap`` seconds for reports Stripe lists late; a report is recorded once. Returns the reports read, the new
    ones, and the meter events that the new ones say Stripe refused."""
    now = time.time() if now is None else now
    newest = conn.execute('SELECT extract(epoch FROM platform.meter_error_cursor()) AS c').fetchone()['c']
    since = max(float(newest) - overlap if newest is not None else 0, now - EVENT_RETENTION + 60)
    out = {'reports': 0, 'new': 0, 'refused': 0}
    for event in api.v2_events(METER_ERROR_TYPES, since):
        with conn.transaction():
            new = conn.execute('SELECT platform.meter_error_record(%s) AS n', (Jsonb(event),)).fetchone()['n']
        out['reports'] += 1
        if new:
            out['new'] += 1
            out['refused'] += sum(t.get('error_count', 0) for t in event['data']['reason']['error_types'])
    return out


def _meter(meters, api, meter_id):
    """A meter, read once a run."""
    if meter_id not in meters:
        meters[meter_id] = api.get('/v1/billing/meters/%s' % meter_id)
    return meters[meter_id]


def _meter_event(meters, api, row):
    """The meter event of a planned push, with the payload keys of its meter."""
    meter = _meter(meters, api, row['stripe_meter_id'])
    return {'event_name': meter['event_name'], 'identifier': row['identifier'],
            'timestamp': int(row['hour'].timestamp()),
            'payload': {meter['customer_mapping']['event_payload_key']: row['stripe_customer_id'],
                        meter['value_settings']['event_payload_key']: str(row['quantity'])}}


def _stream_event(event):
    return dict(event, timestamp=time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime(event['timestamp'])))


def _counted_before(api, meters, rows, fresh_keys):
    """Split unmarked pushes first sent more than DEDUP_WINDOW ago, whose identifiers Stripe may have forgotten,
    by what Stripe's meter event summary of their customer, meter and hour shows: (counted, not counted,
    unverified). A group that also has a push inside the window waits for it to be marked; a summary that fits
    neither all nor none of a group (usage sent by something else, or a part counted), or a meter that does not
    sum its events, needs an operator."""
    groups = {}
    for r in rows:
        groups.setdefault((r['stripe_meter_id'], r['stripe_customer_id'], r['hour']), []).append(r)
    counted, uncounted, unverified = [], [], []
    for (meter, customer, hour), group in groups.items():
        formula = ((_meter(meters, api, meter) or {}).get('default_aggregation') or {}).get('formula')
        if (meter, customer, hour) in fresh_keys or formula != 'sum':
            unverified += group
            continue
        start = int(hour.timestamp())
        page = api.get('/v1/billing/meters/%s/event_summaries' % meter, {
            'customer': customer, 'start_time': start, 'end_time': start + 3600, 'value_grouping_window': 'hour'})
        total = round(sum(float(s['aggregated_value']) for s in (page or {}).get('data', [])))
        extra = total - group[0]['counted']
        if extra == 0:
            uncounted += group
        elif extra == sum(r['quantity'] for r in group):
            counted += group
        else:
            unverified += group
    return counted, uncounted, unverified


def push_usage(conn, api, settle=900, lookback=3 * 86400, workers=8, batch=500, now=None, stream=False):
    """Send the overage of closed hours to Stripe's billing meters, exactly once: the pushes are planned and
    committed first, each is recorded as attempted, sent with its identifier (also the Idempotency-Key), and
    marked sent in batches. A crash leaves the unmarked ones to the next run, which Stripe deduplicates by
    identifier for 24 hours; past that, a push is resent only if Stripe's meter event summary shows that it was
    not counted, and marked sent if it was.
    ``stream``: the v2 meter event stream, 100 events a call; Stripe drops a known identifier, and validates
    later (refusals only reach its meter error reports).
    Returns counts: planned (unsent at the start), sent, expired (older than Stripe takes), checked (past the
    24-hour window, checked against summaries) and unverified (of those, left for an operator or a later run)."""
    now = time.time() if now is None else now
    with conn.transaction():
        rows = conn.execute('SELECT * FROM platform.meter_push_plan(make_interval(secs => %s), '
                            'make_interval(secs => %s))', (settle, lookback)).fetchall()
    live = [r for r in rows if r['hour'].timestamp() > now - METER_WINDOW]
    fresh, stale = [], []
    for r in live:
        (fresh if r['attempted_at'] is None or r['attempted_at'].timestamp() > now - DEDUP_WINDOW else stale).append(r)
    meters = {}
    counted, uncounted, unverified = _counted_before(
        api, meters, stale, {(r['stripe_meter_id'], r['stripe_customer_id'], r['hour']) for r in fresh})
    sent = conn.execute('SELECT platform.meter_push_sent(%s) AS n',
                        ([r['identifier'] for r in counted],)).fetchone()['n'] if counted else 0
    live = fresh + uncounted
    if live:
        conn.execute('SELECT platform.meter_push_attempt(%s)', ([r['identifier'] for r in live],))
    events = [_meter_event(meters, api, r) for r in live]

    def send(event):
        try:
            api.post('/v1/billing/meter_events', event, event['identifier'])
        except stripe.InvalidRequestError as e:
            # Stripe refuses an identifier it holds: proof that the event was taken before
            if 'already exists with identifier' not in str(e.user_message or e):
                raise
        return [event['identifier']]

    def send_stream(chunk):
        api.stream_events([_stream_event(e) for e in chunk])
        return [e['identifier'] for e in chunk]

    units = [events[i:i + 100] for i in range(0, len(events), 100)] if stream else events
    per_batch = max(1, batch // 100) if stream else batch
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(units), per_batch):
            done, failed = [], []
            for future in [pool.submit(send_stream if stream else send, u) for u in units[start:start + per_batch]]:
                try:
                    done.extend(future.result())
                except stripe.StripeError as e:
                    failed.append(e)
            sent += conn.execute('SELECT platform.meter_push_sent(%s) AS n', (done,)).fetchone()['n']
            if failed:  # what was taken is marked; the rest goes out on the next run
                raise failed[0]
    return {'planned': len(rows), 'sent': sent, 'expired': len(rows) - len(fresh) - len(stale),
            'checked': len(stale), 'unverified': len(unverified), 'calls': api.calls}


def connect(dsn):
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row,
                           options='-c search_path=pg_catalog,pg_temp')


class Receiver(object):
    """The webhook endpoint, a WSGI application: 200 only after the commit; 400 for a bad or stale signature
    (nothing written); 503 when the database or Stripe cannot be reached, so that Stripe delivers again."""

    def __init__(self, dsn, secrets, reader, tolerance=300, log=None):
        self.dsn, self.secrets, self.reader = dsn, list(secrets), reader
        self.tolerance = tolerance
        self.log = log or (lambda msg: None)
        self.local = threading.local()
        self.after_commit = None  # tests: what happens between the commit and the answer

    def _conn(self):
        conn = getattr(self.local, 'conn', None)
        if conn is None or conn.closed:
            conn = self.local.conn = connect(self.dsn)
        return conn

    @staticmethod
    def _answer(start_response, status, body):
        data = json.dumps(body).encode('utf-8')
        start_response(status, [('Content-Type', 'application/json'), ('Content-Length', str(len(data)))])
        return [data]

    def __call__(self, environ, start_response):
        if environ.get('REQUEST_METHOD') != 'POST':
            return self._answer(start_response, '405 Method Not Allowed', {'error': 'POST only'})
        try:
            length = int(environ.get('CONTENT_LENGTH') or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            return self._answer(start_response, '413 Payload Too Large', {'error': 'body too large'})
        payload = environ['wsgi.input'].read(length)
        try:
            event = verify(payload, environ.get('HTTP_STRIPE_SIGNATURE'), self.secrets, self.tolerance)
        except (SignatureError, UnicodeDecodeError) as e:
            self.log('refused a delivery: %s' % e)
            return self._answer(start_response, '400 Bad Request', {'error': 'signature verification failed'})
        try:
            result = apply_event(self._conn(), self.reader, event, 'webhook')
        except psycopg.Error as e:
            self.local.conn = None
            self.log('event %s not taken, the database failed: %s' % (event['id'], str(e).strip()))
            return self._answer(start_response, '503 Service Unavailable', {'error': 'database unavailable'})
        except stripe.StripeError as e:
            self.log('event %s not taken, Stripe failed: %s' % (event['id'], e))
            return self._answer(start_response, '503 Service Unavailable', {'error': 'stripe unavailable'})
        if self.after_commit:
            self.after_commit(event)
        self.log('event %s %s: %s' % (event['id'], event['type'], result['outcome']))
        return self._answer(start_response, '200 OK', dict(result, id=event['id']))
