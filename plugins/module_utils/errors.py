# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The errors of the selfbase.platform modules and the one path from an error to the module's failure."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class InputError(ValueError):
    """Invalid input, found before the first write; the message starts with the field it names."""


class ServiceError(Exception):
    """A refusal by a service the modules call (Stripe, Hasura); str() says who refused what."""


def fail(module, error, conn=None, subject=None, **result):
    """End the run with the module's failure for an input, service or database error.

    With a database connection, the open transaction is rolled back, and a service error says that the database
    was not written, so the next run finishes the work. ``subject`` prefixes the message (what failed)."""
    if isinstance(error, InputError):
        msg = str(error)
    elif isinstance(error, ServiceError):
        msg = str(error)
        if conn is not None and not module.check_mode:
            msg += '; nothing was written to the database, run again to finish'
    else:
        if conn is not None:
            conn.rollback()
        msg = 'The database refused the change, nothing was written there: %s' % str(error).strip()
    module.fail_json(msg='%s: %s' % (subject, msg) if subject else msg, **result)


def exit_run(module, run, subject):
    """Exit with the result of run.run() (a Stripe module's run); an input or service error fails with ``subject``,
    the writes the run planned (run.actions) and its Stripe calls so far."""
    try:
        result = run.run()
    except (InputError, ServiceError) as e:
        fail(module, e, subject=subject, actions=run.actions, api_calls=run.client.counts())
    module.exit_json(**result)
