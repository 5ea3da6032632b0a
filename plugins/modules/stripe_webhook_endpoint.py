#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: stripe_webhook_endpoint
short_description: Manage a Stripe webhook endpoint
version_added: 0.1.0
description:
  - Creates, updates and deletes one Stripe webhook endpoint (C(/v1/webhook_endpoints)), identified by its O(url).
    One paginated list call finds it; endpoints are not fetched one by one.
  - Stripe shows an endpoint's signing secret (C(whsec_...)) only in the answer to its creation. The module returns it
    then, as RV(secret), and never again; later runs report RV(created=false). Register the result on a task with
    C(no_log) enabled and store the secret at once (see EXAMPLES). A lost secret can be rolled in the
    Stripe Dashboard, or the endpoint deleted (O(state=absent)) and created again.
  - Only the options you set are compared. Input is validated completely before the first write.
options:
  url:
    description:
      - Absolute C(https://) URL Stripe posts events to (C(http://) only works in test mode). It identifies the
        endpoint; to move an endpoint, delete the old URL and create the new one.
    type: str
    required: true
  enabled_events:
    description:
      - Event types sent to the endpoint, for example C(invoice.paid) or C(customer.subscription.updated); C(*)
        alone means every event. Stripe has no other wildcard (C(customer.subscription.*) is refused), so each type
        is checked against the list of the installed C(stripe) library at the pinned API version. Compared as a
        set, so order and duplicates do not matter.
      - Required when the endpoint is created.
    type: list
    elements: str
  description:
    description:
      - Free-form description shown in the Stripe Dashboard. An empty string removes it.
    type: str
  disabled:
    description:
      - V(true) disables the endpoint (Stripe stops sending events to it), V(false) enables it.
      - New endpoints are enabled unless this is V(true).
    type: bool
  state:
    description:
      - V(present) creates or updates the endpoint. V(absent) deletes every endpoint with this URL.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - selfbase.platform.stripe
attributes:
  check_mode:
    support: full
    description: Reads the endpoints, reports what would change with the predicted endpoint and diff, and writes
      nothing (so no secret is returned).
  diff_mode:
    support: full
    description: Shows the endpoint before and after, in the shape of RV(webhook_endpoint), never with the secret.
  idempotent:
    support: full
    description: A second run with the same options reports no change and makes no write call to Stripe.
notes:
  - The returned RV(secret) is not masked by the module (a module cannot hide a value it returns); enabling C(no_log)
    on the task keeps it out of the output and logs, while the registered variable still holds it.
  - When several endpoints share the URL (possible when they were created by hand), O(state=present) fails and
    lists them; delete the extra ones in the Dashboard, or run O(state=absent) first.
seealso:
  - name: Stripe webhook endpoints API
    description: Reference of the webhook endpoint object.
    link: https://docs.stripe.com/api/webhook_endpoints
  - name: Verify webhook signatures
    description: How the application checks C(Stripe-Signature) with the signing secret.
    link: https://docs.stripe.com/webhooks#verify-events
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Ensure the billing webhook endpoint
  selfbase.platform.stripe_webhook_endpoint:
    url: https://api.example.com/webhooks/stripe
    description: selfbase billing
    enabled_events:
      - customer.subscription.created
      - customer.subscription.updated
      - customer.subscription.deleted
      - invoice.paid
      - invoice.payment_failed
  delegate_to: localhost
  register: stripe_webhook
  no_log: true  # the result holds the signing secret on creation

- name: Store the signing secret in a file only root can read
  ansible.builtin.copy:
    content: "{{ stripe_webhook.secret }}"
    dest: /etc/selfbase/stripe-webhook-secret
    owner: root
    group: root
    mode: "0600"
  when: stripe_webhook.created
  no_log: true

- name: Or store it in HashiCorp Vault (KV version 2)
  community.hashi_vault.vault_kv2_write:
    url: https://vault.example.com:8200
    path: selfbase/stripe-webhook
    data:
      signing_secret: "{{ stripe_webhook.secret }}"
  delegate_to: localhost
  when: stripe_webhook.created
  no_log: true

- name: Disable the endpoint during maintenance
  selfbase.platform.stripe_webhook_endpoint:
    url: https://api.example.com/webhooks/stripe
    disabled: true
  delegate_to: localhost

- name: Remove an old endpoint
  selfbase.platform.stripe_webhook_endpoint:
    url: https://old.example.com/stripe
    state: absent
  delegate_to: localhost
'''

RETURN = r'''
webhook_endpoint:
  description:
    - The endpoint after this run (in check mode, as it would be), without its secret. Empty when there is none.
    - An endpoint that check mode would create has no C(id) yet.
  returned: always
  type: dict
  contains:
    id:
      description: Stripe id of the endpoint.
      type: str
      sample: we_1Q8bT1ZpVBQ0Nk2abcdEFGH
    url:
      description: URL.
      type: str
      sample: https://api.example.com/webhooks/stripe
    enabled_events:
      description: Enabled event types, sorted.
      type: list
      elements: str
      sample: ["customer.subscription.updated", "invoice.paid"]
    description:
      description: Description, or null.
      type: str
      sample: selfbase billing
    status:
      description: C(enabled) or C(disabled).
      type: str
      sample: enabled
created:
  description: Whether this run created the endpoint (in check mode, whether it would).
  returned: always
  type: bool
  sample: true
secret:
  description:
    - Signing secret of the endpoint, for verifying C(Stripe-Signature) headers.
    - Only returned by the run that created the endpoint; Stripe never shows it again. Use C(no_log) on the task.
  returned: when the endpoint was created (not in check mode)
  type: str
  sample: whsec_0123456789abcdef
msg:
  description: What happened, including that the secret of an existing endpoint cannot be retrieved.
  returned: always
  type: str
  sample: Webhook endpoint exists; its signing secret is only returned by the run that creates it.
api_calls:
  description: Stripe API calls this run made (each list page is one read).
  returned: always
  type: dict
  sample: {"reads": 1, "writes": 0}
'''

import re

from ansible.module_utils.basic import AnsibleModule
from urllib.parse import urlsplit
from ansible_collections.selfbase.platform.plugins.module_utils.errors import fail
from ansible_collections.selfbase.platform.plugins.module_utils.stripe_api import (
    STRIPE_API_VERSION, StripeClient, StripeError, event_types, stripe_argument_spec)

PATH = '/v1/webhook_endpoints'
EVENT_RE = re.compile(r'^(\*|[a-z_]+(\.[a-z_]+)+)$')
EXISTS = 'Webhook endpoint exists; its signing secret is only returned by the run that creates it.'


def view(endpoint):
    """The endpoint as this module reports and compares it (never the secret)."""
    if not endpoint:
        return {}
    return dict(id=endpoint['id'], url=endpoint['url'], enabled_events=sorted(set(endpoint['enabled_events'])),
                description=endpoint.get('description') or None, status=endpoint['status'])


def validate(p):
    """Every check that needs no Stripe call; returns the first error."""
    url = urlsplit(p['url'])
    if url.scheme not in ('https', 'http') or not url.hostname or any(c.isspace() for c in p['url']):
        return 'url: %r is not an absolute http(s) URL' % p['url']
    events = p['enabled_events']
    if events is not None:
        if not events:
            return 'enabled_events: must list at least one event type (or "*")'
        known = event_types()
        for i, event in enumerate(events):
            if isinstance(event, str) and event.endswith('.*') and len(event) > 2:
                prefix = event[:-1]
                matching = sorted(e for e in known or () if e.startswith(prefix))
                return ('enabled_events[%d]: %r: Stripe has no prefix wildcards, only "*" (every event); list the '
                        'types%s' % (i, event, (': ' + ', '.join(matching)) if matching else ''))
            if not isinstance(event, str) or not EVENT_RE.match(event) or (known and event not in known):
                return ('enabled_events[%d]: %r is not a Stripe event type at API version %s (for example '
                        'invoice.paid)' % (i, event, STRIPE_API_VERSION))
        if '*' in events and len(set(events)) > 1:
            return 'enabled_events: "*" already means every event; list it alone'
    if p['description'] is not None and len(p['description']) > 5000:
        return 'description: at most 5000 characters'
    return None


def write(client, p, before, after, kept):
    """Create or update the endpoint; a new endpoint's signing secret goes into kept."""
    if not before:
        # events arrive in the version the modules and the webhook receiver read
        params = dict(url=p['url'], enabled_events=p['enabled_events'], api_version=STRIPE_API_VERSION)
        if after['description']:
            params['description'] = after['description']
        current = client.post(PATH, params)
        if current.get('secret'):
            kept['secret'] = current['secret']
        if after['status'] == 'disabled':  # not a create parameter
            current = client.post('%s/%s' % (PATH, current['id']), dict(disabled=True))
        return current
    params = {}
    if after['enabled_events'] != before['enabled_events']:
        params['enabled_events'] = p['enabled_events']
    if after['description'] != before['description']:
        params['description'] = after['description'] or ''
    if after['status'] != before['status']:
        params['disabled'] = after['status'] == 'disabled'
    return client.post('%s/%s' % (PATH, before['id']), params)


def main():
    argument_spec = stripe_argument_spec()
    argument_spec.update(
        url=dict(type='str', required=True),
        enabled_events=dict(type='list', elements='str'),
        description=dict(type='str'),
        disabled=dict(type='bool'),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    error = validate(p)
    if error:
        module.fail_json(msg=error)

    client = StripeClient(module)
    created, kept, msg = False, {}, None
    try:
        found = [w for w in client.list(PATH) if w['url'] == p['url']]
        if p['state'] == 'present' and len(found) > 1:
            module.fail_json(msg='url: %d webhook endpoints have this URL (%s); delete the extra ones first'
                             % (len(found), ', '.join(w['id'] for w in found)),
                             api_calls=client.counts())
        current = found[0] if found else None
        before = view(current)
        if current and p['state'] == 'present' and current.get('api_version') != STRIPE_API_VERSION:
            module.warn('webhook endpoint %s sends events at API version %s, not the pinned %s, and Stripe cannot '
                        'change that: delete it (state=absent) and create it again'
                        % (current['id'], current.get('api_version') or "(the account's default)",
                           STRIPE_API_VERSION))

        if p['state'] == 'absent':
            after = {}
            changed = bool(found)
            msg = 'Webhook endpoint deleted.' if changed else 'No webhook endpoint has this URL.'
            if changed and not module.check_mode:
                for endpoint in found:
                    client.delete('%s/%s' % (PATH, endpoint['id']))
        else:
            if not before and p['enabled_events'] is None:
                module.fail_json(msg='enabled_events: required to create the webhook endpoint for %s' % p['url'],
                                 api_calls=client.counts())
            after = dict(before) if before else dict(id=None, url=p['url'], description=None, status='enabled')
            if p['enabled_events'] is not None:
                after['enabled_events'] = sorted(set(p['enabled_events']))
            if p['description'] is not None:
                after['description'] = p['description'] or None
            if p['disabled'] is not None:
                after['status'] = 'disabled' if p['disabled'] else 'enabled'
            changed = before != after
            created = not before
            msg = 'Webhook endpoint created.' if created else EXISTS

            if changed and not module.check_mode:
                after = view(write(client, p, before, after, kept))
    except StripeError as e:
        # created, then a later call failed: the secret could never be shown again
        fail(module, e, subject='Stripe webhook endpoint %s' % p['url'], api_calls=client.counts(),
             **(dict(kept, created=True) if kept else {}))

    result = dict(changed=changed, created=created, webhook_endpoint=after, msg=msg,
                  api_calls=client.counts())
    result.update(kept)
    if module._diff:
        result['diff'] = dict(before=before, after=after)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
