#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r'''
module: tenant
short_description: Manage one tenant of the selfbase platform
version_added: 0.1.0
description:
  - Creates, updates, suspends, restores and soft-deletes one tenant in C(platform.tenants), with its domains
    (C(platform.tenant_domains)), plan, settings, branding and features.
  - Only the options you set are compared and changed; the others are left as they are.
  - Input is validated completely before anything is written. All changes of a run are written in one transaction,
    each with a row in C(platform.audit_log) (entity C(tenant), key the slug, with the state before and after).
  - To reconcile many tenants at once, use M(selfbase.platform.tenants), which shares this module's logic.
options:
  slug:
    description:
      - Unique, stable identifier of the tenant; it cannot be renamed.
      - 2 to 63 lower-case letters, digits and hyphens, starting with a letter or digit.
    type: str
    required: true
  name:
    description:
      - Display name. Defaults to O(slug) when the tenant is created; left alone when omitted otherwise.
    type: str
  status:
    description:
      - V(present) makes sure the tenant exists and is not deleted. It creates it as C(active), restores a
        deleted tenant to C(active), and leaves any other status (C(trial), C(past_due), C(suspended), ...) alone.
      - V(active), V(trial) and V(suspended) set that status (and restore a deleted tenant to it).
      - V(absent) soft-deletes the tenant. Its status becomes C(deleted), C(deleted_at) is set, and its data, domains
        and quotas are kept. The other options are ignored. Nothing happens when the tenant does not exist.
      - Hard deletion is done by M(selfbase.platform.tenants) with O(selfbase.platform.tenants#module:purge_deleted=true).
    type: str
    choices: [present, active, trial, suspended, absent]
    default: present
  plan:
    description:
      - Code of the plan (C(platform.plans)). It must exist, and it must be active when it is assigned; a tenant
        that stays on a plan that has since been deactivated is accepted.
    type: str
  plan_source:
    description:
      - Who chooses the tenant's plan and billing cycle from now on (C(platform.tenants.plan_source), migration 0017).
      - V(customer) is what the Stripe webhook receiver sets when the customer changes plan in Stripe (Checkout,
        the Customer Portal, or the dashboard); a plan or billing cycle given for such a tenant is then not applied,
        and RV(plans_kept) and a warning name the difference, so that the inventory does not undo the customer's
        choice on every run.
      - V(operator) takes the plan back, and applies the given O(plan) and O(billing_cycle).
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
      - Length of the trial, in days (0 or more). It sets C(trial_ends_at) to now plus this many days when the
        tenant is created with, or moves into, O(status=trial).
      - It is not applied again while the tenant is already in C(trial), so re-runs are idempotent.
    type: int
  domains:
    description:
      - The exact set of the tenant's domains; domains not listed are removed. When omitted, domains are not touched.
        An empty list removes every domain.
      - Each element is a domain name, or a dict with the keys C(domain), C(primary) (bool) and C(verified) (bool).
      - Names are lower-cased and must be valid host names (IDNs in punycode). A domain may be listed once, and
        must not belong to another tenant, including a soft-deleted one.
      - At most one domain may be primary. When none is marked, the first one is.
      - When C(verified) is omitted, a domain keeps its stored flag (new domains are not verified).
    type: list
    elements: raw
  settings:
    description:
      - Tenant settings (a JSON object). Merged into the stored object, top-level keys only, unless O(purge=true).
    type: dict
  branding:
    description:
      - Branding (a JSON object). Merged like O(settings).
    type: dict
  features:
    description:
      - Feature flags (a JSON object). Merged like O(settings).
    type: dict
  purge:
    description:
      - When V(true), each of O(settings), O(branding) and O(features) that is given replaces the stored object,
        so keys not given are removed. When V(false), given top-level keys are merged into it.
    type: bool
    default: false
extends_documentation_fragment:
  - selfbase.platform.postgres
attributes:
  check_mode:
    support: full
    description: Reports what would change, with the predicted state and diff, and writes nothing.
  diff_mode:
    support: full
    description: Shows the tenant before and after, in the shape of RV(tenant); before is empty when it did not exist.
  idempotent:
    support: full
    description: A second run with the same options changes nothing and reports no change.
notes:
  - Log in as a superuser or as a member of C(selfbase_admin). Runs of this module and of
    M(selfbase.platform.tenants) are serialised on a row lock only the control plane can take, waiting at most 60 seconds.
seealso:
  - module: selfbase.platform.tenants
  - module: selfbase.platform.platform_schema
author:
  - selfbase.platform maintainers (@selfbase)
'''

EXAMPLES = r'''
- name: Create a tenant on the pro plan, billed yearly, with a custom domain
  selfbase.platform.tenant:
    login_db: selfbase
    slug: acme
    name: ACME Corporation
    plan: pro
    billing_cycle: year
    domains:
      - domain: app.acme.example
        verified: true
      - acme.selfbase.example
    settings:
      locale: en_GB
    branding:
      primary_color: "#ff6600"
  become: true
  become_user: postgres

- name: Start a 14-day trial
  selfbase.platform.tenant:
    login_db: selfbase
    slug: globex
    status: trial
    trial_days: 14
    plan: starter

- name: Replace the feature flags instead of merging them
  selfbase.platform.tenant:
    login_db: selfbase
    slug: acme
    features:
      beta_dashboard: true
    purge: true

- name: Suspend a tenant that did not pay
  selfbase.platform.tenant:
    login_db: selfbase
    slug: initech
    status: suspended

- name: Soft-delete a tenant (data is kept)
  selfbase.platform.tenant:
    login_db: selfbase
    slug: initech
    status: absent
'''

RETURN = r'''
plans_kept:
  description:
    - The tenants whose customer chose their plan in Stripe (plan source V(customer)), for which this run was given
      another plan or billing cycle and left it alone. Give O(plan_source=operator) to apply it.
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
tenant:
  description:
    - The tenant after this run (in check mode, as it would be). Empty when it does not exist.
    - In check mode, a tenant that would be created has no C(id) yet.
  returned: always
  type: dict
  contains:
    id:
      description: Tenant id.
      type: str
      sample: 3f0b5c1e-8a51-4b43-9d7e-6d1c2f0a9b11
    slug:
      description: Slug.
      type: str
      sample: acme
    name:
      description: Display name.
      type: str
      sample: ACME Corporation
    status:
      description: One of C(trial), C(active), C(past_due), C(suspended), C(canceled), C(deleted).
      type: str
      sample: active
    plan:
      description: Plan code, or null.
      type: str
      sample: pro
    plan_source:
      description: V(operator) or V(customer), who chose the plan last (see O(plan_source)).
      type: str
      sample: operator
    billing_cycle:
      description: C(month) or C(year).
      type: str
      sample: year
    trial_ends_at:
      description: End of the trial, or null.
      type: str
      sample: "2025-07-01 09:30:00.123456+00:00"
    settings:
      description: Settings.
      type: dict
      sample: {"locale": "en_GB"}
    branding:
      description: Branding.
      type: dict
      sample: {"primary_color": "#ff6600"}
    features:
      description: Feature flags.
      type: dict
      sample: {"beta_dashboard": true}
    domains:
      description: Domains, the primary one first, then by name.
      type: list
      elements: dict
      sample: [{"domain": "app.acme.example", "primary": true, "verified": true}]
    created_at:
      description: Creation time.
      type: str
      sample: "2025-06-17 09:30:00.123456+00:00"
    updated_at:
      description: Time of the last change made by these modules.
      type: str
      sample: "2025-06-17 09:30:00.123456+00:00"
    deleted_at:
      description: Soft-deletion time, or null.
      type: str
      sample: null
'''

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError, fail
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import (
    DatabaseError, connect, postgres_argument_spec, require_schema)
from ansible_collections.selfbase.platform.plugins.module_utils.tenancy import (
    apply, db_now, diff_item, lock, normalise, plan_changes, public_state, read_catalog, read_state,
    plans_kept, tenant_options)


def main():
    argument_spec = postgres_argument_spec()
    argument_spec.update(tenant_options())
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)

    conn = connect(module)
    try:
        require_schema(module, conn, '0017', dict(changed=module.params['status'] != 'absent'))
        cur = conn.cursor()
        if not module.check_mode:
            lock(cur)
        catalog = read_catalog(cur)
        spec = normalise(module.params, '', catalog)
        domains = [d['domain'] for d in spec['domains'] or ()]
        state = read_state(cur, slugs=[spec['slug']], domains=domains)
        changes = plan_changes([spec], state, catalog, db_now(cur))
        change = changes[0]
        changed = change['kind'] != 'unchanged'
        before, after = diff_item(change)
        if changed and not module.check_mode:
            apply(cur, changes)
            conn.commit()
            after = public_state(read_state(cur, slugs=[spec['slug']])['tenants'].get(spec['slug']))
        conn.rollback()
    except (InputError, DatabaseError) as e:
        fail(module, e, conn)
    finally:
        conn.close()

    result = dict(changed=changed, tenant=after, plans_kept=plans_kept(module, changes))
    if module._diff:
        result['diff'] = dict(before=before, after=after)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
