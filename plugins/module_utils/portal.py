# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A Stripe Customer Portal configuration as declarative state (the selfbase.platform.billing_portal module).

The plans a customer may switch between are plan codes: each is the product whose metadata.plan_code it is (made
by billing_plan), with that product's active licensed recurring prices (the base prices, not the metered overage
ones). Stripe never deletes a configuration; state=absent deactivates it."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re

from ansible_collections.selfbase.platform.plugins.module_utils.billing import BillingError, find_by_key, plan_products

KEY_META = 'selfbase_portal'
KEY_RE = re.compile(r'^[a-z0-9][a-z0-9_-]{0,62}$')
URL_RE = re.compile(r'^https?://[^\s]+$')
MAX_PLANS = 10      # Stripe's limit of products in subscription_update
PROFILE = ('headline', 'privacy_policy_url', 'terms_of_service_url')
DOWNGRADES = ['decreasing_item_amount', 'shortening_interval']


def desired(p):
    """The configuration p asks for (plans as codes), validated before any call; raises BillingError naming the
    field. None for state=absent."""
    if not KEY_RE.match(p['key']):
        raise BillingError('key: %r must be 1 to 63 lower-case letters, digits, _ or -, starting with a letter or '
                           'digit' % p['key'])
    if p['state'] == 'absent':
        return None
    for field in ('privacy_policy_url', 'terms_of_service_url', 'default_return_url'):
        if p[field] and not URL_RE.match(p[field]):
            raise BillingError('%s: must be an http(s) URL; got %r' % (field, p[field]))
    cancel = p['cancellation']
    if cancel['prorate'] and cancel['mode'] != 'immediately':
        raise BillingError('cancellation.prorate: prorations apply only to mode=immediately (at the period\'s end '
                           'there is nothing to prorate)')
    plans = list(p['plans'] or [])
    if len(set(plans)) != len(plans):
        raise BillingError('plans: %s listed twice' % ', '.join(sorted(set(c for c in plans if plans.count(c) > 1))))
    if len(plans) > MAX_PLANS:
        raise BillingError('plans: Stripe allows at most %d products in the portal; got %d' % (MAX_PLANS, len(plans)))
    changes = p['plan_changes']
    if plans and not changes['allowed']:
        raise BillingError('plan_changes.allowed: give at least one kind of change, or no plans')
    metadata = dict(p['metadata'] or {})
    if KEY_META in metadata:
        raise BillingError('metadata: %s is the module\'s own key' % KEY_META)
    return dict(
        active=True, name=p['name'], default_return_url=p['default_return_url'], login_page=p['login_page'],
        business_profile=dict((k, p[k]) for k in PROFILE), customer_update=sorted(p['customer_update']),
        invoice_history=p['invoice_history'], payment_method_update=p['payment_method_update'],
        cancellation=dict(enabled=cancel['enabled'], mode=cancel['mode'], prorate=cancel['prorate'],
                          reasons=sorted(cancel['reasons'])),
        plans=sorted(plans),
        plan_changes=dict(allowed=sorted(changes['allowed']) if plans else [],
                          proration_behavior=changes['proration_behavior'] if plans else 'none',
                          downgrades_at_period_end=changes['downgrades_at_period_end'] if plans else False),
        metadata=metadata)


def view(obj, plan_of):
    """A stored configuration in the shape of desired() (products as plan codes), or None."""
    if obj is None:
        return None
    f = obj['features']
    cancel, update = f['subscription_cancel'], f['subscription_update']
    reason = cancel.get('cancellation_reason') or {}
    metadata = dict(obj.get('metadata') or {})
    metadata.pop(KEY_META, None)
    enabled = update.get('enabled')
    return dict(
        id=obj['id'], active=obj['active'], name=obj.get('name'), default_return_url=obj.get('default_return_url'),
        login_page=bool((obj.get('login_page') or {}).get('enabled')),
        business_profile=dict((k, (obj.get('business_profile') or {}).get(k)) for k in PROFILE),
        customer_update=sorted(f['customer_update']['allowed_updates'] or [])
        if f['customer_update']['enabled'] else [],
        invoice_history=f['invoice_history']['enabled'], payment_method_update=f['payment_method_update']['enabled'],
        cancellation=dict(enabled=cancel['enabled'], mode=cancel.get('mode') or 'at_period_end',
                          prorate=cancel.get('proration_behavior') == 'create_prorations',
                          reasons=sorted(reason.get('options') or []) if reason.get('enabled') else []),
        plans=sorted(plan_of.get(e['product'], e['product']) for e in update.get('products') or []) if enabled else [],
        plan_changes=dict(
            allowed=sorted(update.get('default_allowed_updates') or []) if enabled else [],
            proration_behavior=update.get('proration_behavior') or 'none' if enabled else 'none',
            downgrades_at_period_end=bool(enabled and ((update.get('schedule_at_period_end') or {})
                                                       .get('conditions')))),
        prices=dict((plan_of.get(e['product'], e['product']), sorted(e.get('prices') or []))
                    for e in update.get('products') or []) if enabled else {},
        metadata=metadata)


def params(want, key, products):
    """The create/update parameters of a wanted configuration; ``products`` is plan code -> (product, prices)."""
    cancel, changes = want['cancellation'], want['plan_changes']
    update = dict(enabled=bool(want['plans']))
    if want['plans']:
        update.update(
            products=[dict(product=products[c][0], prices=products[c][1]) for c in want['plans']],
            default_allowed_updates=changes['allowed'], proration_behavior=changes['proration_behavior'])
        if changes['downgrades_at_period_end']:
            update['schedule_at_period_end'] = dict(conditions=[dict(type=t) for t in DOWNGRADES])
    return dict(
        name=want['name'] or '', default_return_url=want['default_return_url'] or '',
        business_profile=dict((k, v or '') for k, v in want['business_profile'].items() if v or k == 'headline'),
        login_page=dict(enabled=want['login_page']),
        metadata=dict(want['metadata'], **{KEY_META: key}),
        features=dict(
            customer_update=dict(enabled=bool(want['customer_update']), **(
                dict(allowed_updates=want['customer_update']) if want['customer_update'] else {})),
            invoice_history=dict(enabled=want['invoice_history']),
            payment_method_update=dict(enabled=want['payment_method_update']),
            subscription_cancel=dict(
                enabled=cancel['enabled'], mode=cancel['mode'],
                proration_behavior='create_prorations' if cancel['prorate'] else 'none',
                # options is required even while the reasons are off
                cancellation_reason=dict(enabled=bool(cancel['reasons']), options=cancel['reasons'] or ['other'])),
            subscription_update=update))


def comparable(v, prices=None):
    """What a run compares: the view without its id, with each plan's prices when known."""
    if v is None:
        return None
    out = dict((k, x) for k, x in v.items() if k not in ('id', 'prices'))
    if prices is not None:
        out['prices'] = prices
    return out


class PortalRun(object):
    """One run of billing_portal; ``actions`` lists the planned Stripe writes, also when the run fails."""

    def __init__(self, module, client):
        self.module, self.client, self.p = module, client, module.params
        self.actions = []

    def products(self, codes):
        """plan code -> (product id, its base price ids), and product id -> plan code, for every plan product."""
        product_of = plan_products(self.client)
        missing = [c for c in codes if c not in product_of]
        if missing:
            raise BillingError('plans: no Stripe product has metadata.plan_code %s; create the plan with '
                               'selfbase.platform.billing_plan first' % ', '.join(missing))
        wanted = {}
        for code in codes:
            prices = sorted(pr['id'] for pr in self.client.list('/v1/prices', {'product': product_of[code],
                                                                               'active': 'true'})
                            if pr.get('type') == 'recurring' and (pr.get('recurring') or {}).get('usage_type')
                            != 'metered')
            if not prices:
                raise BillingError('plans: %s has no active recurring price on its product %s to switch to'
                                   % (code, product_of[code]))
            wanted[code] = (product_of[code], prices)
        return wanted, dict((v, k) for k, v in product_of.items())

    def find(self):
        return find_by_key(self.module, self.client, '/v1/billing_portal/configurations', KEY_META, self.p['key'],
                           'portal configurations')

    def run(self):
        key = self.p['key']
        want = desired(self.p)
        current = self.find()
        products, plan_of = self.products(want['plans'] if want else [])
        have = view(current, plan_of)
        if want and have:
            for k in PROFILE[1:]:
                # Stripe cannot unset these URLs: one left out keeps its value
                if want['business_profile'][k] is None:
                    want['business_profile'][k] = have['business_profile'][k]
            if have['plan_changes']['downgrades_at_period_end'] and want['plans'] \
                    and not want['plan_changes']['downgrades_at_period_end']:
                raise BillingError('plan_changes.downgrades_at_period_end: Stripe\'s API cannot remove the conditions '
                                   'of %s once set; change them in the Dashboard, or use a new key' % have['id'])
        write = None
        if want is None:
            if have and have['active']:
                write = ('deactivate', dict(active=False))
        else:
            prices = dict((c, products[c][1]) for c in want['plans'])
            if have is None:
                write = ('create', params(want, key, products))
            elif comparable(have, have['prices']) != comparable(want, prices):
                body = params(want, key, products)
                if not have['active']:
                    body['active'] = True
                write = ('update', body)
        self.actions = [] if write is None else [
            '%s portal configuration %s' % (write[0], have['id'] if have else key)]
        after = have
        if write and not self.module.check_mode:
            path = '/v1/billing_portal/configurations' + ('/' + have['id'] if have else '')
            after = view(self.client.post(path, write[1]), plan_of)
        elif write:
            # a write needs a wanted configuration, or one to deactivate
            after = dict(comparable(want), id=have['id'] if have else None) if want else dict(have, active=False)
        result = dict(changed=write is not None, configuration=self.public(after), actions=self.actions,
                      api_calls=self.client.counts())
        if self.module._diff:
            result['diff'] = dict(before=self.public(have) or {}, after=result['configuration'] or {})
        return result

    @staticmethod
    def public(v):
        return None if v is None else dict((k, x) for k, x in v.items() if k != 'prices')
