# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One platform operator (the selfbase.platform.platform_operator module): an auth user listed in
platform.operators, who may act through Hasura's operator role, and that role among the user's roles in auth (the
allowed roles of their tokens)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import uuid

from ansible_collections.selfbase.platform.plugins.module_utils.errors import InputError
from ansible_collections.selfbase.platform.plugins.module_utils.postgres import audit, control_lock, require_schema

try:
    from psycopg import sql
except ImportError:  # reported by postgres.connect()
    sql = None

ROLE = 'operator'  # the Hasura role platform.current_operator_id() accepts (migration 0009)


def _auth_owner(conn):
    """The owner of auth.user_roles (auth's login), or None while auth has not created its tables."""
    row = conn.execute("SELECT pg_catalog.pg_get_userbyid(c.relowner) AS owner FROM pg_catalog.pg_class c "
                       "WHERE c.oid = pg_catalog.to_regclass('auth.user_roles')").fetchone()
    return row['owner'] if row else None


def resolve_user(conn, value, auth_owner):
    """The user's id from a UUID or an email (looked up in auth.users)."""
    if '@' in value:
        if auth_owner is None:
            raise InputError('user: an email needs auth\'s tables (auth.users), which are not in this database; '
                             'give the user\'s id')
        row = conn.execute('SELECT id FROM auth.users WHERE email = %s', (value,)).fetchone()
        if row is None:
            raise InputError('user: no auth user with email %s' % value)
        return row['id']
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InputError('user: must be an auth user\'s id (a UUID) or email, got %r' % value)


def read(conn, user_id, auth_owner):
    row = conn.execute('SELECT note FROM platform.operators WHERE user_id = %s', (user_id,)).fetchone()
    state = dict(user_id=str(user_id), listed=row is not None, note=row['note'] if row else None)
    if auth_owner is not None:
        state['auth_role'] = conn.execute('SELECT 1 FROM auth.user_roles WHERE user_id = %s AND role = %s',
                                          (user_id, ROLE)).fetchone() is not None
    return state


def write_auth_role(conn, user_id, owner, present):
    """auth's rows, written as their owner: a trigger or default of auth's tables never runs as this login."""
    conn.execute(sql.SQL('SET LOCAL ROLE {}').format(sql.Identifier(owner)))
    if present:
        conn.execute('INSERT INTO auth.roles (role) VALUES (%s) ON CONFLICT DO NOTHING', (ROLE,))
        conn.execute('INSERT INTO auth.user_roles (user_id, role) VALUES (%s, %s)', (user_id, ROLE))
    else:
        conn.execute('DELETE FROM auth.user_roles WHERE user_id = %s AND role = %s', (user_id, ROLE))
    conn.execute('RESET ROLE')


def run(module, conn):
    """Validate, plan and (unless in check mode) write; returns the module's result."""
    p = module.params
    present = p['state'] == 'present'
    if p['note'] is not None and len(p['note']) > 200:
        raise InputError('note: at most 200 characters, got %d' % len(p['note']))
    require_schema(module, conn, '0009', dict(changed=present))
    owner = _auth_owner(conn)
    if p['auth_role'] and owner is None:
        raise InputError('auth_role: auth\'s tables (auth.user_roles) are not in database %s yet; auth creates them '
                         'on its first start. Run this after the auth role, or set auth_role: false'
                         % p['login_db'])
    with conn.transaction():
        user_id = resolve_user(conn, p['user'], owner)
        if present and p['auth_role'] and conn.execute('SELECT 1 FROM auth.users WHERE id = %s',
                                                       (user_id,)).fetchone() is None:
            raise InputError('user: no auth user with id %s' % user_id)
        if not module.check_mode:
            control_lock(conn.cursor(), 'platform_operator')
        before = read(conn, user_id, owner if p['auth_role'] else None)
        after = dict(before, listed=present, note=(p['note'] if p['note'] is not None else before['note'] or '')
                     if present else None)
        if p['auth_role']:
            after['auth_role'] = present
        changed = before != after
        if changed and not module.check_mode:
            if not present:
                conn.execute('DELETE FROM platform.operators WHERE user_id = %s', (user_id,))
            else:
                conn.execute('INSERT INTO platform.operators (user_id, note) VALUES (%s, %s) ON CONFLICT (user_id) '
                             'DO UPDATE SET note = EXCLUDED.note', (user_id, after['note']))
            if p['auth_role'] and before['auth_role'] != after['auth_role']:
                write_auth_role(conn, user_id, owner, present)
            action = ('update' if before['listed'] else 'create') if present else 'delete'
            with conn.cursor() as cur:
                audit(cur, 'operator', str(user_id), action, None if action == 'create' else before,
                      after if present else None)
    result = dict(changed=changed, operator=after)
    if module._diff:
        result['diff'] = dict(before=before, after=after)
    return result
