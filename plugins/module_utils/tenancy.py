# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenants as the tenant and tenants modules manage them.

One code path serves one tenant and ten thousand: normalise and validate the
input (normalise, check_unique), read the current state in a few set-based
queries (read_catalog, read_state), compare in Python (plan_changes), and write
with set-based statements in the caller's transaction (apply).

Internal tenant states are dicts shaped like the modules' return value, except
that C(domains) maps a domain to {id, verified, primary} and C(quotas) maps a
metric to {limit, period, mode, overage_price}; public_state() turns one into
the returned shape."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import json
import re
import uuid
from datetime import timedelta
from ansible.module_utils.common.validation import (
    check_type_bool, check_type_dict, check_type_int, check_type_list, check_type_raw, check_type_str)
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import control_lock, json_safe
from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError
from ansible_collections.selfbase.platform.plugins.module_utils.quotas import (
    QuotaError, decimal_text, parse_price, quota_entry)

SLUG_RE = re.compile(r'[a-z0-9][a-z0-9-]{1,62}')
# the CHECK constraint of platform.tenant_domains.domain
DOMAIN_RE = re.compile(r'([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}')
STATUSES = ('present', 'active', 'trial', 'suspended', 'absent')
BILLING_CYCLES = ('month', 'year')
# who chose the tenant's plan last (migration 0017): the operator, or the customer in Stripe
PLAN_SOURCES = ('operator', 'customer')
JSON_FIELDS = ('settings', 'branding', 'features')
# tenant columns compared (and written) besides domains
ROW_FIELDS = ('name', 'status', 'plan', 'plan_source', 'billing_cycle', 'trial_ends_at', 'settings', 'branding',
              'features', 'deleted_at')
PUBLIC_FIELDS = ('id', 'slug', 'name', 'status', 'plan', 'plan_source', 'billing_cycle', 'trial_ends_at', 'settings',
                 'branding', 'features', 'domains', 'created_at', 'updated_at', 'deleted_at')
COUNT_KINDS = ('created', 'updated', 'suspended', 'deleted', 'purged', 'unchanged')
LOCK_KEY = 'tenants'


class TenancyError(InputError):
    """Invalid input; the message names the field and the rule."""


def tenant_options(slug_required=True, with_quotas=False):
    """Argument spec of one tenant: the tenant module's options, and the suboptions of a tenants[] entry.

    The tenants module does not hand these to AnsibleModule as suboptions: Ansible's per-entry validation costs
    seconds for ten thousand entries and names no entry. coerce() applies them instead."""
    options = dict(
        slug=dict(type='str', required=slug_required),
        name=dict(type='str'),
        status=dict(type='str', default='present', choices=list(STATUSES)),
        plan=dict(type='str'),
        plan_source=dict(type='str', choices=list(PLAN_SOURCES)),
        billing_cycle=dict(type='str', choices=list(BILLING_CYCLES)),
        trial_days=dict(type='int'),
        domains=dict(type='list', elements='raw'),
        settings=dict(type='dict'),
        branding=dict(type='dict'),
        features=dict(type='dict'),
        purge=dict(type='bool', default=False),
    )
    if with_quotas:
        # choices, units and prices are checked by normalise(), so messages name tenants[i].quotas[j].<field>
        options['quotas'] = dict(type='list', elements='dict', options=dict(
            metric=dict(type='str'),
            limit=dict(type='raw'),
            period=dict(type='str', default='month'),
            mode=dict(type='str', default='hard'),
            overage_price=dict(type='raw'),
        ))
    return options


# Input ----------------------------------------------------------------------

_TYPE_CHECKERS = dict(str=check_type_str, int=check_type_int, bool=check_type_bool, dict=check_type_dict,
                      list=check_type_list, raw=check_type_raw)
ENTRY_OPTIONS = tenant_options(slug_required=False, with_quotas=True)


def coerce(value, options, where):
    """What AnsibleModule does to a suboption dict: refuse unknown keys, convert types, fill defaults.

    where names the dict in messages, such as 'tenants[3]'."""
    if not isinstance(value, dict):
        raise TenancyError('%s: must be a dict' % where)
    unknown = sorted(set(value) - set(options))
    if unknown:
        raise TenancyError('%s: unsupported option(s) %s; supported: %s'
                           % (where, ', '.join(str(k) for k in unknown), ', '.join(sorted(options))))
    result = {}
    for key, option in options.items():
        item = value.get(key)
        if item is None:
            result[key] = option.get('default')
            continue
        try:
            result[key] = _TYPE_CHECKERS[option['type']](item)
        except (TypeError, ValueError) as e:
            raise TenancyError('%s.%s: must be of type %s; got %r (%s)' % (where, key, option['type'], item, e))
    return result


def read_catalog(cur):
    """Plans (code -> active) and metrics (name -> unit) that input is checked against."""
    plans = dict((r['code'], r['active']) for r in cur.execute('SELECT code, active FROM platform.plans'))
    metrics = dict((r['name'], r['unit']) for r in cur.execute('SELECT name, unit FROM platform.metrics'))
    return dict(plans=plans, metrics=metrics)


def _known(names):
    names = sorted(names)
    return ', '.join(names) if names else '(none)'


def _normalise_domains(value, field):
    if value is None:
        return None
    if not isinstance(value, list):
        raise TenancyError('%s: must be a list of domain names or of dicts with domain, primary, verified' % field)
    result, seen = [], set()
    for i, item in enumerate(value):
        where = '%s[%d]' % (field, i)
        primary = verified = None
        if isinstance(item, dict):
            unknown = sorted(set(item) - set(('domain', 'primary', 'verified')))
            if unknown:
                raise TenancyError('%s: unknown key(s) %s; use domain, primary, verified' % (where, ', '.join(unknown)))
            name = item.get('domain')
            try:
                primary = None if item.get('primary') is None else boolean(item['primary'], strict=True)
                verified = None if item.get('verified') is None else boolean(item['verified'], strict=True)
            except TypeError:
                raise TenancyError('%s: primary and verified must be booleans' % where)
        else:
            name = item
        if not isinstance(name, str) or not name.strip():
            raise TenancyError('%s: a domain name is required' % where)
        name = name.strip().lower()
        if len(name) > 253 or not DOMAIN_RE.fullmatch(name):
            raise TenancyError('%s: %r is not a valid domain name (lower-case labels of letters, digits and hyphens, '
                               'separated by dots, ending in a top-level domain; IDNs in punycode)' % (where, name))
        if name in seen:
            raise TenancyError('%s: domain %s is listed twice' % (field, name))
        seen.add(name)
        result.append(dict(domain=name, primary=primary, verified=verified))
    primaries = [d['domain'] for d in result if d['primary']]
    if len(primaries) > 1:
        raise TenancyError('%s: at most one domain may be primary; got %s' % (field, ', '.join(primaries)))
    for d in result:
        d['primary'] = bool(d['primary'])
    if result and not primaries:
        result[0]['primary'] = True
    return result


def _normalise_quotas(value, field, metrics):
    if value is None:
        return None
    if not isinstance(value, list):
        raise TenancyError('%s: must be a list of dicts with metric, limit, period, mode, overage_price' % field)
    result = {}
    for i, item in enumerate(value):
        where = '%s[%d]' % (field, i)
        item = coerce(item, ENTRY_OPTIONS['quotas']['options'], where)
        try:
            metric, limit, period, mode = quota_entry(item, where, metrics, result)
            price = parse_price(item.get('overage_price'), where + '.overage_price')
        except QuotaError as e:
            raise TenancyError(str(e))
        result[metric] = dict(limit=limit, period=period, mode=mode, overage_price=price)
    return result


def normalise(entry, prefix, catalog):
    """Validate one tenant's options (module params or a tenants[] entry) and return them normalised.

    prefix is put before every field name in error messages: '' or 'tenants[3].'."""
    slug = entry.get('slug')
    if slug is None or slug == '':
        raise TenancyError('%sslug: required' % prefix)
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise TenancyError('%sslug: %r is not a valid slug: 2 to 63 lower-case letters, digits and hyphens, '
                           'starting with a letter or digit' % (prefix, slug))
    spec = dict(prefix=prefix, slug=slug)
    name = entry.get('name')
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise TenancyError('%sname: must be a non-empty string' % prefix)
    spec['name'] = name
    status = entry.get('status') or 'present'
    if status not in STATUSES:
        raise TenancyError('%sstatus: must be one of %s; got %r' % (prefix, ', '.join(STATUSES), status))
    spec['status'] = status
    plan = entry.get('plan')
    if plan is not None and plan not in catalog['plans']:
        raise TenancyError('%splan: unknown plan %r; known plans: %s' % (prefix, plan, _known(catalog['plans'])))
    spec['plan'] = plan
    source = entry.get('plan_source')
    if source is not None and source not in PLAN_SOURCES:
        raise TenancyError('%splan_source: must be one of %s; got %r' % (prefix, ', '.join(PLAN_SOURCES), source))
    spec['plan_source'] = source
    cycle = entry.get('billing_cycle')
    if cycle is not None and cycle not in BILLING_CYCLES:
        raise TenancyError('%sbilling_cycle: must be one of %s; got %r' % (prefix, ', '.join(BILLING_CYCLES), cycle))
    spec['billing_cycle'] = cycle
    days = entry.get('trial_days')
    if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 0):
        raise TenancyError('%strial_days: must be a whole number of days, 0 or more; got %r' % (prefix, days))
    spec['trial_days'] = days
    spec['domains'] = _normalise_domains(entry.get('domains'), prefix + 'domains')
    for key in JSON_FIELDS:
        value = entry.get(key)
        if value is not None and not isinstance(value, dict):
            raise TenancyError('%s%s: must be a dict' % (prefix, key))
        spec[key] = value
    spec['purge'] = bool(entry.get('purge'))
    spec['quotas'] = _normalise_quotas(entry.get('quotas'), prefix + 'quotas', catalog['metrics'])
    return spec


def check_unique(specs):
    """Refuse a slug, or a domain, that appears in two entries of one list."""
    slugs, domains = {}, {}
    for spec in specs:
        first = slugs.setdefault(spec['slug'], spec)
        if first is not spec:
            raise TenancyError('%sslug: duplicate slug %s (also %sslug)' % (spec['prefix'], spec['slug'], first['prefix']))
        for d in spec['domains'] or ():
            first = domains.setdefault(d['domain'], spec)
            if first is not spec:
                raise TenancyError('%sdomains: domain %s is also listed for %s (%s)'
                                   % (spec['prefix'], d['domain'], first['prefix'].rstrip('.'), first['slug']))


# Current state ----------------------------------------------------------------

_TENANTS_SQL = ('SELECT id, slug, name, status, plan_code AS plan, plan_source, billing_cycle, trial_ends_at, settings, '
                'branding, features, created_at, updated_at, deleted_at FROM platform.tenants')
_DOMAINS_SQL = ('SELECT d.id, d.tenant_id, t.slug, d.domain, d.verified, d.is_primary FROM platform.tenant_domains d '
                'JOIN platform.tenants t ON t.id = d.tenant_id')
_QUOTAS_SQL = ('SELECT tenant_id, metric, limit_value, period, mode, overage_unit_price FROM platform.tenant_quotas')


def lock(cur):
    """Serialise runs of the tenant modules until the transaction ends."""
    control_lock(cur, LOCK_KEY)


def db_now(cur):
    """The transaction's timestamp: what now() returns in every statement of it."""
    return cur.execute('SELECT now() AS now').fetchone()['now']


def read_state(cur, slugs=None, domains=(), quotas=False):
    """Current tenants, by slug, with their domains (and quota overrides), and the owner of each domain read.

    slugs=None reads every tenant; otherwise only those, plus the owners of the given domains."""
    if slugs is None:
        rows = cur.execute(_TENANTS_SQL).fetchall()
        domain_rows = cur.execute(_DOMAINS_SQL).fetchall()
    else:
        rows = cur.execute(_TENANTS_SQL + ' WHERE slug = ANY(%s)', (list(slugs),)).fetchall()
        domain_rows = cur.execute(_DOMAINS_SQL + ' WHERE t.slug = ANY(%s) OR d.domain = ANY(%s)',
                                  (list(slugs), list(domains))).fetchall()
    tenants, by_id = {}, {}
    for row in rows:
        row['domains'], row['quotas'] = {}, {}
        tenants[row['slug']] = by_id[row['id']] = row
    owners = {}
    for d in domain_rows:
        owners[d['domain']] = d['slug']
        if d['tenant_id'] in by_id:
            by_id[d['tenant_id']]['domains'][d['domain']] = dict(id=d['id'], verified=d['verified'],
                                                                 primary=d['is_primary'])
    if quotas and by_id:
        if slugs is None:
            quota_rows = cur.execute(_QUOTAS_SQL)
        else:
            quota_rows = cur.execute(_QUOTAS_SQL + ' WHERE tenant_id = ANY(%s)', (list(by_id),))
        for q in quota_rows:
            by_id[q['tenant_id']]['quotas'][q['metric']] = dict(
                limit=q['limit_value'], period=q['period'], mode=q['mode'], overage_price=q['overage_unit_price'])
    return dict(tenants=tenants, owners=owners)


def _public(state, with_quotas=False):
    if state is None:
        return {}
    out = dict((k, state[k]) for k in PUBLIC_FIELDS if k != 'domains')
    out['domains'] = [dict(domain=d, primary=v['primary'], verified=v['verified'])
                      for d, v in sorted(state['domains'].items(), key=lambda i: (not i[1]['primary'], i[0]))]
    if with_quotas:
        out['quotas'] = [dict(metric=m, limit=q['limit'], period=q['period'], mode=q['mode'],
                              overage_price=decimal_text(q['overage_price']))
                         for m, q in sorted(state['quotas'].items())]
    return out


def public_state(state, with_quotas=False):
    """A tenant as the modules return it (JSON-safe); {} for none."""
    return json_safe(_public(state, with_quotas))


# Planning -------------------------------------------------------------------

def _domain_key(domains):
    return dict((d, (v['verified'], v['primary'])) for d, v in domains.items())


def _quota_tuple(q):
    return (q['limit'], q['period'], q['mode'], q['overage_price'])


def _quota_key(quotas):
    return dict((m, _quota_tuple(q)) for m, q in quotas.items())


def _change(slug, prefix, before, after, kind, row_changed=False, quotas_changed=False, purge=False, kept=None):
    return dict(slug=slug, prefix=prefix, before=before, after=after, kind=kind, row_changed=row_changed,
                quotas_changed=quotas_changed, purge=purge, plan_kept=kept)


def _new_tenant(slug, now):
    return dict(id=None, slug=slug, name=slug, status='active', plan=None, plan_source='operator',
                billing_cycle='month', trial_ends_at=None,
                settings={}, branding={}, features={}, domains={}, quotas={}, created_at=now, updated_at=now,
                deleted_at=None)


def _plan_listed(spec, cur, catalog, now):
    slug, prefix, status = spec['slug'], spec['prefix'], spec['status']
    kept = None
    if cur is None and status == 'absent':
        return _change(slug, prefix, None, None, 'unchanged')
    base = _new_tenant(slug, now) if cur is None else cur
    after = dict(base)
    after['domains'] = dict(base['domains'])
    after['quotas'] = dict(base['quotas'])
    if status == 'absent':
        # soft delete: everything else is left as it is
        if base['status'] != 'deleted':
            after['status'], after['deleted_at'] = 'deleted', now
    else:
        if status == 'present':
            new_status = 'active' if cur is None or base['status'] == 'deleted' else base['status']
        else:
            new_status = status
        if cur is None or new_status != base['status']:
            after['status'], after['deleted_at'] = new_status, None
            if new_status == 'trial' and spec['trial_days'] is not None:
                after['trial_ends_at'] = now + timedelta(days=spec['trial_days'])
        if spec['name'] is not None:
            after['name'] = spec['name']
        if spec['plan_source'] is not None:
            after['plan_source'] = spec['plan_source']
        # a plan the customer chose in Stripe stays, with its cycle, until the file says plan_source: operator
        wanted = dict((k, spec[k]) for k in ('plan', 'billing_cycle') if spec[k] is not None and spec[k] != base[k])
        if cur is not None and after['plan_source'] == 'customer' and wanted:
            kept = dict(slug=slug, wanted=wanted, current=dict((k, base[k]) for k in wanted))
        else:
            if wanted.get('plan') is not None and not catalog['plans'][wanted['plan']]:
                raise TenancyError('%splan: plan %s is not active, so it cannot be assigned' % (prefix, wanted['plan']))
            after.update(wanted)
        for key in JSON_FIELDS:
            if spec[key] is not None:
                merged = {} if spec['purge'] else dict(base[key])
                merged.update(spec[key])
                after[key] = merged
        if spec['domains'] is not None:
            old, new = base['domains'], {}
            for d in spec['domains']:
                prev = old.get(d['domain'])
                verified = d['verified'] if d['verified'] is not None else bool(prev and prev['verified'])
                new[d['domain']] = dict(id=prev['id'] if prev else None, verified=verified, primary=d['primary'])
            after['domains'] = new
        if spec['quotas'] is not None:
            after['quotas'] = dict(spec['quotas'])
    if cur is None:
        return _change(slug, prefix, None, after, 'created', row_changed=True,
                       quotas_changed=bool(after['quotas']))
    row_changed = (any(cur[k] != after[k] for k in ROW_FIELDS)
                   or _domain_key(cur['domains']) != _domain_key(after['domains']))
    quotas_changed = _quota_key(cur['quotas']) != _quota_key(after['quotas'])
    if not (row_changed or quotas_changed):
        return _change(slug, prefix, cur, cur, 'unchanged', kept=kept)
    if row_changed:
        after['updated_at'] = now
    return _change(slug, prefix, cur, after, _kind(cur, after), row_changed, quotas_changed, kept=kept)


def _kind(before, after):
    if after['status'] != before['status'] and after['status'] in ('deleted', 'suspended'):
        return after['status']
    return 'updated'


def _check_domains(changes, owners):
    """Refuse a domain that would end up with two tenants. Domains a listed tenant drops (or a purged tenant
    had) are free for another listed tenant in the same run."""
    owner = dict(owners)
    for c in changes:
        if c['before'] is None or c['kind'] == 'unchanged':
            continue
        kept = c['after']['domains'] if c['after'] is not None else {}
        for d in c['before']['domains']:
            if d not in kept and owner.get(d) == c['slug']:
                del owner[d]
    for c in changes:
        if c['after'] is None or c['kind'] == 'unchanged':
            continue
        old = c['before']['domains'] if c['before'] is not None else {}
        for d in sorted(set(c['after']['domains']) - set(old)):
            other = owner.get(d)
            if other is not None and other != c['slug']:
                raise TenancyError('%sdomains: domain %s already belongs to tenant %s' % (c['prefix'], d, other))
            owner[d] = c['slug']


def plan_changes(specs, state, catalog, now, exclusive=False, purge_deleted=False):
    """What a run changes, one dict per tenant (listed ones first, in list order).

    kind is one of COUNT_KINDS; before/after are internal states (None when the tenant does not exist on that
    side). Raises TenancyError before anything is written."""
    tenants = state['tenants']
    changes = [_plan_listed(spec, tenants.get(spec['slug']), catalog, now) for spec in specs]
    listed = set(spec['slug'] for spec in specs)
    unlisted = sorted(set(tenants) - listed)
    if exclusive:
        for slug in unlisted:
            cur = tenants[slug]
            if cur['status'] not in ('deleted', 'suspended'):
                after = dict(cur, status='suspended', updated_at=now)
                changes.append(_change(slug, '', cur, after, 'suspended', row_changed=True))
    if purge_deleted:
        for c in changes:
            if c['after'] is not None and c['after']['status'] == 'deleted':
                c.update(after=None, kind='purged', purge=True)
        for slug in unlisted:
            if tenants[slug]['status'] == 'deleted':
                changes.append(_change(slug, '', tenants[slug], None, 'purged', purge=True))
    _check_domains(changes, state['owners'])
    return changes


def plans_kept(module, changes):
    """The plans and cycles customers chose in Stripe that a run left alone, with a warning naming the first."""
    kept = [c['plan_kept'] for c in changes if c['plan_kept']]
    if kept:
        module.warn('%d tenant(s) keep the plan their customer chose in Stripe (plan_source customer), not the one '
                    'given: %s; give plan_source operator to apply the given plan'
                    % (len(kept), ', '.join('%s (%s)' % (k['slug'], ', '.join(
                        '%s %s, not %s' % (f, k['current'][f], v) for f, v in sorted(k['wanted'].items())))
                        for k in kept[:5])))
    return kept


def summarise(changes):
    counts = dict((k, 0) for k in COUNT_KINDS)
    for c in changes:
        counts[c['kind']] += 1
    return counts


# Writing --------------------------------------------------------------------

_TEMP_TABLES = dict(
    sb_tenants=('id uuid, is_new boolean, slug text, name text, status text, plan_code text, plan_source text, '
                'billing_cycle text, '
                'trial_ends_at timestamptz, settings jsonb, branding jsonb, features jsonb, created_at timestamptz, '
                'updated_at timestamptz, deleted_at timestamptz'),
    sb_domains='id bigint, tenant_id uuid, domain text, verified boolean, is_primary boolean',
    sb_quotas='tenant_id uuid, metric text, limit_value bigint, period text, mode text, overage_unit_price numeric',
    sb_audit='tenant_id uuid, entity text, entity_key text, action text, before jsonb, after jsonb',
)

_WRITE_TENANTS = (
    'INSERT INTO platform.tenants (id, slug, name, status, plan_code, plan_source, billing_cycle, trial_ends_at, '
    'settings, branding, features, created_at, updated_at, deleted_at) '
    'SELECT id, slug, name, status, plan_code, plan_source, billing_cycle, trial_ends_at, settings, branding, '
    'features, created_at, updated_at, deleted_at FROM pg_temp.sb_tenants WHERE is_new',
    'UPDATE platform.tenants t SET name = s.name, status = s.status, plan_code = s.plan_code, '
    'plan_source = s.plan_source, '
    'billing_cycle = s.billing_cycle, trial_ends_at = s.trial_ends_at, settings = s.settings, branding = s.branding, '
    'features = s.features, updated_at = s.updated_at, deleted_at = s.deleted_at '
    'FROM pg_temp.sb_tenants s WHERE t.id = s.id AND NOT s.is_new',
)
# Primaries are taken away before they are given, so the one-primary index never sees two.
_WRITE_DOMAINS = (
    'UPDATE platform.tenant_domains d SET verified = s.verified, is_primary = s.is_primary '
    'FROM pg_temp.sb_domains s WHERE d.id = s.id AND NOT s.is_primary',
    'UPDATE platform.tenant_domains d SET verified = s.verified, is_primary = s.is_primary '
    'FROM pg_temp.sb_domains s WHERE d.id = s.id AND s.is_primary',
    'INSERT INTO platform.tenant_domains (tenant_id, domain, verified, is_primary) '
    'SELECT tenant_id, domain, verified, is_primary FROM pg_temp.sb_domains WHERE id IS NULL',
)
_WRITE_QUOTAS = (
    'INSERT INTO platform.tenant_quotas AS q (tenant_id, metric, limit_value, period, mode, overage_unit_price) '
    'SELECT tenant_id, metric, limit_value, period, mode, overage_unit_price FROM pg_temp.sb_quotas '
    'ON CONFLICT (tenant_id, metric) DO UPDATE SET limit_value = EXCLUDED.limit_value, period = EXCLUDED.period, '
    'mode = EXCLUDED.mode, overage_unit_price = EXCLUDED.overage_unit_price',
)
_WRITE_AUDIT = (
    'INSERT INTO platform.audit_log (tenant_id, entity, entity_key, action, before, after) '
    'SELECT tenant_id, entity, entity_key, action, before, after FROM pg_temp.sb_audit',
)


def _json(value):
    return None if value is None else json.dumps(value, default=str, sort_keys=True)


def _quota_public(metric, q):
    if q is None:
        return None
    return dict(metric=metric, limit=q['limit'], period=q['period'], mode=q['mode'],
                overage_price=decimal_text(q['overage_price']))


def _bulk(cur, table, rows, statements):
    """COPY rows into a temporary table, then run set-based statements that read it."""
    if not rows:
        return
    cur.execute('DROP TABLE IF EXISTS pg_temp.%s' % table)
    cur.execute('CREATE TEMP TABLE %s (%s) ON COMMIT DROP' % (table, _TEMP_TABLES[table]))
    with cur.copy('COPY pg_temp.%s FROM STDIN' % table) as copy:
        for row in rows:
            copy.write_row(row)
    for sql in statements:
        cur.execute(sql)


def _release_placements(cur, purged):
    """A purged tenant leaves no placement behind: a pooled one goes with it, a database of its own must be dropped
    first (selfbase.platform.tenant_placement), so that no database is forgotten (migration 0010)."""
    if cur.execute("SELECT pg_catalog.to_regclass('platform.tenant_placements') AS t").fetchone()['t'] is None:
        return
    held = [r['slug'] for r in cur.execute(
        "SELECT t.slug FROM platform.tenant_placements p JOIN platform.tenants t ON t.id = p.tenant_id "
        "WHERE p.tenant_id = ANY(%s) AND p.tier <> 'pooled' ORDER BY t.slug", (purged,))]
    if held:
        raise InputError('tenants: %s still have a database of their own; drop it with '
                         'selfbase.platform.tenant_placement (drop_database) before purging' % ', '.join(held))
    cur.execute('DELETE FROM platform.tenant_placements WHERE tenant_id = ANY(%s)', (purged,))


def apply(cur, changes):
    """Write the planned changes, with their audit rows, in the caller's transaction.

    New tenants get their id here (it is set in their after state)."""
    purged, domain_deletes, quota_deletes = [], [], []
    tenant_rows, domain_rows, quota_rows, audit_rows = [], [], [], []
    for c in changes:
        if c['kind'] == 'unchanged':
            continue
        before, after, slug = c['before'], c['after'], c['slug']
        if c['purge']:
            purged.append(before['id'])
            audit_rows.append((None, 'tenant', slug, 'delete', _json(_public(before)), None))
            continue
        if before is None:
            after['id'] = uuid.uuid4()
        tid = after['id']
        old_domains = before['domains'] if before is not None else {}
        if c['row_changed']:
            tenant_rows.append((tid, before is None, slug, after['name'], after['status'], after['plan'],
                                after['plan_source'], after['billing_cycle'], after['trial_ends_at'], _json(after['settings']),
                                _json(after['branding']), _json(after['features']), after['created_at'],
                                after['updated_at'], after['deleted_at']))
            domain_deletes.extend(v['id'] for d, v in old_domains.items() if d not in after['domains'])
            for d, v in after['domains'].items():
                prev = old_domains.get(d)
                if prev is None or (prev['verified'], prev['primary']) != (v['verified'], v['primary']):
                    domain_rows.append((v['id'], tid, d, v['verified'], v['primary']))
            if before is None:
                action = 'create'
            elif after['status'] == 'deleted' and before['status'] != 'deleted':
                action = 'delete'
            else:
                action = 'update'
            audit_rows.append((tid, 'tenant', slug, action, _json(_public(before) if before else None),
                               _json(_public(after))))
        if c['quotas_changed']:
            old_quotas = before['quotas'] if before is not None else {}
            for metric in sorted(set(old_quotas) | set(after['quotas'])):
                old, new = old_quotas.get(metric), after['quotas'].get(metric)
                if new is None:
                    quota_deletes.append((tid, metric))
                elif old is not None and _quota_tuple(old) == _quota_tuple(new):
                    continue
                else:
                    quota_rows.append((tid, metric, new['limit'], new['period'], new['mode'], new['overage_price']))
                action = 'create' if old is None else ('delete' if new is None else 'update')
                audit_rows.append((tid, 'tenant_quota', '%s/%s' % (slug, metric), action,
                                   _json(_quota_public(metric, old)), _json(_quota_public(metric, new))))

    # Removals first, so a domain one tenant gives up can go to another in the same run.
    if purged:
        _release_placements(cur, purged)
        cur.execute('DELETE FROM platform.tenants WHERE id = ANY(%s)', (purged,))
    if domain_deletes:
        cur.execute('DELETE FROM platform.tenant_domains WHERE id = ANY(%s)', (domain_deletes,))
    if quota_deletes:
        cur.execute('DELETE FROM platform.tenant_quotas q USING unnest(%s::uuid[], %s::text[]) AS x (tenant_id, metric) '
                    'WHERE q.tenant_id = x.tenant_id AND q.metric = x.metric',
                    ([t for t, _m in quota_deletes], [m for _t, m in quota_deletes]))
    _bulk(cur, 'sb_tenants', tenant_rows, _WRITE_TENANTS)
    _bulk(cur, 'sb_domains', domain_rows, _WRITE_DOMAINS)
    _bulk(cur, 'sb_quotas', quota_rows, _WRITE_QUOTAS)
    _bulk(cur, 'sb_audit', audit_rows, _WRITE_AUDIT)


def diff_item(change, with_quotas=False):
    """One tenant's part of a diff: its state before and after ({} where it does not exist)."""
    return public_state(change['before'], with_quotas), public_state(change['after'], with_quotas)
