#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: billing_meter
short_description: Manage a Stripe billing meter for a metered metric
version_added: 0.1.0
description:
  - Creates, renames, deactivates and reactivates one Stripe Billing Meter (C(/v1/billing/meters)), the object that
    usage-based prices bill on since legacy usage records were removed (API version C(2025-03-31.basil)).
  - A meter is identified by its O(event_name), which is unique among all the meters of the account, active or not.
    One paginated list call finds it; no meter is fetched one by one.
  - Stripe cannot change a meter's aggregation, customer mapping or value key after creation. When one of these
    options differs from the existing meter, the module fails before any write and names the option; use another
    O(event_name) to start a new meter.
  - Only the options you set are compared. Input is validated completely before the first write.
options:
  event_name:
    description:
      - Name of the meter events this meter aggregates, for example the platform metric C(api_requests).
      - 1 to 100 characters without whitespace. It identifies the meter and cannot be changed.
    type: str
    required: true
  display_name:
    description:
      - Name shown in the Stripe Dashboard and on invoices (at most 250 characters).
      - Defaults to O(event_name) when the meter is created; can be changed later.
    type: str
  aggregation:
    description:
      - How events are aggregated over a billing period. V(sum) adds up the event values, V(count) counts the
        events, V(last) keeps the last value (for gauges such as C(storage_bytes)).
      - Defaults to V(sum) when the meter is created. Cannot be changed afterwards.
    type: str
    choices: [sum, count, last]
  customer_mapping_key:
    description:
      - Key in the event payload that holds the Stripe customer id (the mapping type is C(by_id)).
      - Defaults to C(stripe_customer_id) when the meter is created. Cannot be changed afterwards.
    type: str
  value_key:
    description:
      - Key in the event payload that holds the numeric value (ignored by Stripe for O(aggregation=count)).
      - Defaults to C(value) when the meter is created. Cannot be changed afterwards.
    type: str
  state:
    description:
      - V(present) creates the meter, or reactivates it when it is inactive, and renames it when O(display_name)
        differs.
      - V(absent) deactivates the meter. Stripe does not delete meters; an inactive meter keeps its event name, stops
        accepting events, and comes back with V(present). Nothing happens when there is no such meter.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - selfbase.platform.stripe
attributes:
  check_mode:
    support: full
    description: Reads the meters, reports what would change with the predicted meter and diff, and writes nothing.
  diff_mode:
    support: full
    description: Shows the meter before and after, in the shape of RV(meter); before is empty when it did not exist.
  idempotent:
    support: full
    description: A second run with the same options reports no change and makes no write call to Stripe.
seealso:
  - module: selfbase.platform.billing_plan
  - name: Stripe Billing Meters API
    description: Reference of the meter object.
    link: https://docs.stripe.com/api/billing/meter
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Meter API requests (summed per billing period)
  selfbase.platform.billing_meter:
    event_name: api_requests
    display_name: API requests
    aggregation: sum
  delegate_to: localhost

- name: Meter stored bytes as a gauge, with custom payload keys
  selfbase.platform.billing_meter:
    event_name: storage_bytes
    display_name: Storage (bytes)
    aggregation: last
    customer_mapping_key: customer
    value_key: bytes
    api_key: "{{ vault_stripe_secret_key }}"
  delegate_to: localhost

- name: Deactivate a meter that is no longer billed
  selfbase.platform.billing_meter:
    event_name: bandwidth_bytes
    state: absent
  delegate_to: localhost
'''

RETURN = r'''
meter:
  description:
    - The meter after this run (in check mode, as it would be). Empty when there is no such meter.
    - A meter that check mode would create has no C(id) yet.
  returned: always
  type: dict
  contains:
    id:
      description: Stripe id of the meter.
      type: str
      sample: mtr_61Q8bT1ZpVBQ0Nk2
    event_name:
      description: Event name.
      type: str
      sample: api_requests
    display_name:
      description: Display name.
      type: str
      sample: API requests
    aggregation:
      description: C(sum), C(count) or C(last).
      type: str
      sample: sum
    customer_mapping_key:
      description: Payload key of the Stripe customer id.
      type: str
      sample: stripe_customer_id
    value_key:
      description: Payload key of the value.
      type: str
      sample: value
    status:
      description: C(active) or C(inactive).
      type: str
      sample: active
api_calls:
  description: Stripe API calls this run made (each list page is one read).
  returned: always
  type: dict
  sample: {"reads": 1, "writes": 0}
'''

import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.errors import fail
from ansible_collections.selfbase.platform.plugins.module_utils.stripe_api import (
    StripeClient, StripeError, stripe_argument_spec)

PATH = '/v1/billing/meters'
DEFAULTS = dict(aggregation='sum', customer_mapping_key='stripe_customer_id', value_key='value')
IMMUTABLE = ('aggregation', 'customer_mapping_key', 'value_key')
KEY_RE = re.compile(r'^\S{1,100}$')


def view(meter):
    """The meter as this module reports and compares it."""
    if not meter:
        return {}
    return dict(
        id=meter['id'],
        event_name=meter['event_name'],
        display_name=meter['display_name'],
        aggregation=(meter.get('default_aggregation') or {}).get('formula'),
        customer_mapping_key=(meter.get('customer_mapping') or {}).get('event_payload_key'),
        value_key=(meter.get('value_settings') or {}).get('event_payload_key'),
        status=meter['status'],
    )


def validate(p):
    """Every check that needs no Stripe call; returns the first error."""
    if not KEY_RE.match(p['event_name']):
        return 'event_name: %r must be 1 to 100 characters without whitespace' % p['event_name']
    if p['display_name'] is not None and not 0 < len(p['display_name'].strip()) <= 250:
        return 'display_name: must be 1 to 250 characters'
    for field in ('customer_mapping_key', 'value_key'):
        if p[field] is not None and not KEY_RE.match(p[field]):
            return '%s: %r must be 1 to 100 characters without whitespace' % (field, p[field])
    return None


def main():
    argument_spec = stripe_argument_spec()
    argument_spec.update(
        event_name=dict(type='str', required=True),
        display_name=dict(type='str'),
        aggregation=dict(type='str', choices=['sum', 'count', 'last']),
        customer_mapping_key=dict(type='str', no_log=False),
        value_key=dict(type='str', no_log=False),
        state=dict(type='str', default='present', choices=['present', 'absent']),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    error = validate(p)
    if error:
        module.fail_json(msg=error)

    client = StripeClient(module)
    try:
        found = [m for m in client.list(PATH) if m['event_name'] == p['event_name']]
        current = found[0] if found else None
        before = view(current)

        if p['state'] == 'absent':
            after = dict(before, status='inactive') if before else {}
        elif not before:
            after = dict(id=None, event_name=p['event_name'], display_name=p['display_name'] or p['event_name'],
                         status='active', **dict((k, p[k] or v) for k, v in DEFAULTS.items()))
        else:
            for field in IMMUTABLE:
                if p[field] is not None and p[field] != before[field]:
                    module.fail_json(
                        msg='%s: meter %s (%s) has %s %r, and Stripe cannot change it; use another event_name for '
                            'a new meter' % (field, before['id'], p['event_name'], field, before[field]),
                        meter=before, api_calls=client.counts())
            after = dict(before, status='active')
            if p['display_name'] is not None:
                after['display_name'] = p['display_name']

        changed = before != after
        if changed and not module.check_mode:
            if not before:
                current = client.post(PATH, dict(
                    event_name=p['event_name'], display_name=after['display_name'],
                    default_aggregation=dict(formula=after['aggregation']),
                    customer_mapping=dict(event_payload_key=after['customer_mapping_key'], type='by_id'),
                    value_settings=dict(event_payload_key=after['value_key'])))
            else:
                path = '%s/%s' % (PATH, before['id'])
                if before['status'] != after['status']:
                    action = 'deactivate' if after['status'] == 'inactive' else 'reactivate'
                    current = client.post('%s/%s' % (path, action), {})
                if before['display_name'] != after['display_name']:
                    current = client.post(path, dict(display_name=after['display_name']))
            after = view(current)
    except StripeError as e:
        fail(module, e, subject='Stripe meter %s' % p['event_name'], api_calls=client.counts())

    result = dict(changed=changed, meter=after, api_calls=client.counts())
    if module._diff:
        result['diff'] = dict(before=before, after=after)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
