# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Connection options shared by the modules that talk to the platform database."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  login_host:
    description:
      - Host name, IP address or Unix socket directory of the PostgreSQL server.
      - Empty means the libpq default, the local Unix socket.
      - Several hosts separated by commas are tried in turn (libpq); with O(target_session_attrs=read-write)
        that finds the leader of a Patroni cluster from any of its members.
      - Falls back to the E(PGHOST) environment variable.
    type: str
  login_port:
    description:
      - Port of the PostgreSQL server. Falls back to E(PGPORT).
    type: int
    default: 5432
  login_user:
    description:
      - Role to log in as. It must be a superuser, or a member of C(selfbase_admin)
        (for M(selfbase.platform.platform_schema), the database owner with CREATEROLE).
      - Empty means the operating system user, which suits peer authentication on a C(db) host.
      - Falls back to E(PGUSER).
    type: str
  login_password:
    description:
      - Password of O(login_user). Falls back to E(PGPASSWORD). Never logged.
    type: str
  login_db:
    description:
      - Database that holds the platform schema. Falls back to E(PGDATABASE).
    type: str
    default: postgres
  ssl_mode:
    description:
      - libpq C(sslmode). Falls back to E(PGSSLMODE).
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  ca_cert:
    description:
      - CA certificate file used to verify the server with O(ssl_mode=verify-ca) or O(ssl_mode=verify-full).
      - Falls back to E(PGSSLROOTCERT).
    type: path
  connect_timeout:
    description:
      - Seconds to wait for a connection.
    type: int
    default: 10
  target_session_attrs:
    description:
      - libpq C(target_session_attrs). C(read-write) skips a server that accepts no writes, such as a
        Patroni replica. Falls back to E(PGTARGETSESSIONATTRS).
    type: str
    default: any
    choices: [any, read-write, read-only, primary, standby, prefer-standby]
requirements:
  - psycopg >= 3.1 on the host that runs the module (Debian package C(python3-psycopg))
'''
