#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: tenants
short_description: Reconcile many tenants of the selfbase platform in one call
version_added: 0.1.0
description:
  - Reconciles a list of tenants, with their domains, plans, settings and per-tenant quota overrides, in one
    transaction. Each entry takes the options of M(selfbase.platform.tenant), which shares this module's logic,
    plus O(tenants[].quotas).
  - The whole list is validated before anything is written, including duplicate slugs and domains across entries.
    If anything fails, during validation or in the database, nothing is written.
  - Current tenants, domains and quotas are read with a few set-based queries and compared in Python; changes are
    written with set-based statements. Ten thousand tenants take seconds, and a run that changes nothing only reads.
  - Every change writes a row to C(platform.audit_log). Tenants use entity C(tenant) and key the slug, as
    M(selfbase.platform.tenant) does. Quota overrides use entity C(tenant_quota) and key C(<slug>/<metric>).
options:
  tenants_file:
    description:
      - A YAML or JSON file on the controller holding the tenants, as a list of entries like O(tenants), or a mapping
        whose key C(tenants) holds that list. A relative path is looked up like a C(files/) source.
      - The file is read by this module's action plugin with a C YAML parser and handed to the module as one JSON
        text (O(tenants_json)), so ten thousand tenants given this way skip the seconds Ansible spends loading,
        templating and copying them as variables and module arguments.
      - PyYAML needs seconds for tens of thousands of entries, so the plugin keeps a JSON copy of each YAML file it
        parsed, named by the file's SHA-256, in C(ANSIBLE_HOME/selfbase/tenants_file) (the last four); a run on the
        same bytes reads that copy. A JSON file is read directly, and is the fastest on a fresh controller.
      - Mutually exclusive with O(tenants).
    type: path
    version_added: 0.1.0
  tenants_json:
    description:
      - Internal, set by the action plugin from O(tenants_file); leave it unset. The tenants as one JSON text (a list,
        or a mapping with key C(tenants)), which Ansible passes without walking or copying every entry.
    type: str
    version_added: 0.1.0
  tenants:
    description:
      - The tenants to reconcile. Each entry is compared on the options it sets only.
      - Give this or O(tenants_file).
    type: list
    elements: dict
    suboptions:
      slug:
        description:
          - Unique, stable identifier of the tenant; required in every entry.
          - 2 to 63 lower-case letters, digits and hyphens, starting with a letter or digit.
        type: str
      name:
        description:
          - Display name. Defaults to the slug when the tenant is created.
        type: str
      status:
        description:
          - As in M(selfbase.platform.tenant). V(present) creates the tenant as C(active), restores a deleted one
            to C(active), and leaves any other status alone. V(active), V(trial) and V(suspended) set that status.
            V(absent) soft-deletes the tenant (status C(deleted), data kept) and ignores its other options.
        type: str
        choices: [present, active, trial, suspended, absent]
        default: present
      plan:
        description:
          - Code of the plan. It must exist, and be active when it is assigned.
        type: str
      plan_source:
        description:
          - Who chooses the tenant's plan and billing cycle from now on (C(platform.tenants.plan_source), migration 0017).
          - V(customer) is what the Stripe webhook receiver sets when the customer changes plan in Stripe (Checkout,
            the Customer Portal, or the dashboard); a plan or billing cycle given for such a tenant is then not applied,
            and RV(plans_kept) and a warning name the difference, so that the inventory does not undo the customer's
            choice on every run.
          - V(operator) takes the plan back, and applies the given O(tenants[].plan) and O(tenants[].billing_cycle).
          - Omitted, the tenant keeps its plan source; a new tenant starts with the given plan either way, and with
            V(operator) when this is omitted.
        type: str
        choices: [operator, customer]
      billing_cycle:
        description:
          - Billing interval. New tenants get C(month) when this is omitted.
        type: str
        choices: [month, year]
      trial_days:
        description:
          - Days of trial (0 or more), applied when the tenant is created with, or moves into, status C(trial).
        type: int
      domains:
        description:
          - The exact set of the tenant's domains, as in M(selfbase.platform.tenant). When omitted, domains are not
            touched. A domain may appear once in the whole list. It must not belong to a tenant outside the list,
            or to a listed tenant that keeps it.
        type: list
        elements: raw
      settings:
        description:
          - Settings, merged into the stored object (top-level keys) unless O(tenants[].purge=true).
        type: dict
      branding:
        description:
          - Branding, merged like O(tenants[].settings).
        type: dict
      features:
        description:
          - Feature flags, merged like O(tenants[].settings).
        type: dict
      purge:
        description:
          - Replace, instead of merge, each of O(tenants[].settings), O(tenants[].branding) and
            O(tenants[].features) that is given.
        type: bool
        default: false
      quotas:
        description:
          - The exact set of this tenant's quota overrides (C(platform.tenant_quotas)); overrides not listed are
            removed, so the plan's quota applies again. When omitted, overrides are not touched.
        type: list
        elements: dict
        suboptions:
          metric:
            description:
              - Metric name from C(platform.metrics), such as C(api_requests), C(storage_bytes) or C(members).
                Required, once per tenant.
            type: str
          limit:
            description:
              - Required. A whole number, optionally with a unit. Counts and requests take V(100k), V(2.5M) and
                so on. Byte metrics also take V(10GB) or V(1TiB). Use V(unlimited) for no limit.
            type: raw
          period:
            description:
              - Window the limit applies to, one of V(hour), V(day), V(month), V(none).
            type: str
            default: month
          mode:
            description:
              - V(hard) refuses usage past the limit, V(soft) only warns, V(overage) allows it and bills it.
            type: str
            default: hard
          overage_price:
            description:
              - Price per unit past the limit (currency units, at most 10 decimal places).
            type: raw
  exclusive:
    description:
      - When V(true), every tenant in the database that is not listed, and not already C(deleted) or C(suspended),
        is suspended.
    type: bool
    default: false
  purge_deleted:
    description:
      - When V(true), every tenant whose status is C(deleted) after this run is hard-deleted, with all of its rows
        (domains, members, quotas, usage...). This covers both listed tenants with O(tenants[].status=absent) and
        unlisted ones.
      - When V(false), tenants are never hard-deleted.
    type: bool
    default: false
  diff_items:
    description:
      - How many changed tenants the diff and RV(changed_slugs) show. Counts always cover every tenant.
    type: int
    default: 20
extends_documentation_fragment:
  - selfbase.platform.postgres
attributes:
  check_mode:
    support: full
    description: Reports the counts, changed slugs and diff that a real run would produce, and writes nothing.
  diff_mode:
    support: full
    description:
      - Shows the counts, then each of the first O(diff_items) changed tenants before and after, in the shape that
        M(selfbase.platform.tenant) returns, plus C(quotas).
  idempotent:
    support: full
    description: A second run with the same list changes nothing and reports no change.
notes:
  - Log in as a superuser or as a member of C(selfbase_admin). Runs of this module and of
    M(selfbase.platform.tenant) are serialised on a row lock only the control plane can take, waiting at most 60 seconds.
  - A listed tenant is counted once, in the first of these that applies. V(purged), then V(created), then
    V(deleted) (soft-deleted now), then V(suspended) (suspended now), then V(updated), else V(unchanged).
seealso:
  - module: selfbase.platform.tenant
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Reconcile every tenant from the CRM export, suspending the others
  selfbase.platform.tenants:
    login_db: selfbase
    exclusive: true
    tenants: "{{ crm_tenants }}"
  become: true
  become_user: postgres

- name: Every tenant from the inventory's data file, read on the controller
  selfbase.platform.tenants:
    login_db: selfbase
    tenants_file: "{{ inventory_dir }}/data/tenants.yml"
  become: true
  become_user: postgres

- name: A few tenants inline, with quota overrides
  selfbase.platform.tenants:
    login_db: selfbase
    tenants:
      - slug: acme
        name: ACME Corporation
        plan: pro
        domains: [app.acme.example]
        quotas:
          - metric: api_requests
            limit: 5M
          - metric: storage_bytes
            limit: 50GB
            mode: overage
            overage_price: "0.00000002"
      - slug: globex
        status: trial
        trial_days: 14
        plan: starter
      - slug: initech
        status: absent

- name: Hard-delete tenants that were soft-deleted
  selfbase.platform.tenants:
    login_db: selfbase
    tenants: []
    purge_deleted: true
'''

RETURN = r'''
counts:
  description:
    - How many tenants were (in check mode, would be) created, updated, suspended, soft-deleted, purged, or left
      unchanged. Unlisted tenants are counted only when O(exclusive) or O(purge_deleted) changes them.
  returned: always
  type: dict
  sample: {"created": 2, "updated": 1, "suspended": 0, "deleted": 1, "purged": 0, "unchanged": 9996}
changed_slugs:
  description: Slugs of the first O(diff_items) changed tenants, listed ones in list order first.
  returned: always
  type: list
  elements: str
  sample: ["acme", "globex"]
plans_kept:
  description:
    - The tenants whose customer chose their plan in Stripe (plan source V(customer)), for which this run was given
      another plan or billing cycle and left it alone. Give O(tenants[].plan_source=operator) to apply it.
    - At most O(diff_items) of them.
  returned: always
  type: list
  elements: dict
  contains:
    slug:
      description: Tenant slug.
      type: str
    wanted:
      description: The plan and billing cycle given, where they differ.
      type: dict
    current:
      description: The plan and billing cycle the tenant keeps.
      type: dict
  sample: [{"slug": "acme", "wanted": {"plan": "starter"}, "current": {"plan": "pro"}}]
'''

import json

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError, fail
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import (
    DatabaseError, connect, postgres_argument_spec, require_schema)
from ansible_collections.selfbase.platform.plugins.module_utils.tenancy import (
    ENTRY_OPTIONS, apply, check_unique, coerce, db_now, diff_item, lock, normalise, plan_changes,
    plans_kept, read_catalog, read_state, summarise)


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(
        # entries are checked by coerce() and normalise(), whose messages name the entry: tenants[3].slug
        tenants=dict(type='list', elements='dict'),
        # read on the controller by the action plugin, which passes its content as tenants
        tenants_file=dict(type='path'),
        tenants_json=dict(type='str'),
        exclusive=dict(type='bool', default=False),
        purge_deleted=dict(type='bool', default=False),
        diff_items=dict(type='int', default=20),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           mutually_exclusive=[('tenants', 'tenants_file', 'tenants_json')],
                           required_one_of=[('tenants', 'tenants_file', 'tenants_json')])
    p = module.params
    if p['tenants_file'] is not None:
        module.fail_json(msg='tenants_file is read on the controller by the action plugin of '
                             'selfbase.platform.tenants; call the module by that name')
    if p['tenants_json'] is not None:
        try:
            doc = json.loads(p['tenants_json'])
        except ValueError as e:
            module.fail_json(msg='tenants_json: not JSON: %s' % e)
        p['tenants'] = doc.get('tenants') if isinstance(doc, dict) else doc
        if not isinstance(p['tenants'], list):
            module.fail_json(msg='tenants_json: must hold a list of tenants')
    if p['diff_items'] < 0:
        module.fail_json(msg='diff_items: must be 0 or more; got %d' % p['diff_items'])

    # The echoed invocation leaves the list out: ten thousand entries sent back cost the controller seconds.
    invocation = dict(module_args=dict((k, v) for k, v in p.items() if k not in ('tenants', 'tenants_json')))
    conn = connect(module)
    try:
        require_schema(module, conn, '0017', dict(changed=any(
            t.get('status') != 'absent' for t in module.params['tenants'] or [] if isinstance(t, dict))))
        cur = conn.cursor()
        if not module.check_mode:
            lock(cur)
        catalog = read_catalog(cur)
        specs = [normalise(coerce(entry, ENTRY_OPTIONS, 'tenants[%d]' % i), 'tenants[%d].' % i, catalog)
                 for i, entry in enumerate(p['tenants'])]
        check_unique(specs)
        state = read_state(cur, quotas=True)
        changes = plan_changes(specs, state, catalog, db_now(cur), exclusive=p['exclusive'],
                               purge_deleted=p['purge_deleted'])
        changed = [c for c in changes if c['kind'] != 'unchanged']
        if changed and not module.check_mode:
            apply(cur, changed)
            conn.commit()
        conn.rollback()
    except (InputError, DatabaseError) as e:
        fail(module, e, conn, invocation=invocation)
    finally:
        conn.close()

    counts = summarise(changes)
    shown = changed[:p['diff_items']]
    result = dict(changed=bool(changed), counts=counts, changed_slugs=[c['slug'] for c in shown],
                  plans_kept=plans_kept(module, changes)[:p['diff_items']])
    if module._diff:
        before, after = {}, {}
        for c in shown:
            before[c['slug']], after[c['slug']] = diff_item(c, with_quotas=True)
        summary = dict(counts, shown=len(shown), not_shown=len(changed) - len(shown))
        result['diff'] = dict(before=dict(tenants=before), after=dict(summary=summary, tenants=after))
    module.exit_json(invocation=invocation, **result)


if __name__ == '__main__':
    main()
