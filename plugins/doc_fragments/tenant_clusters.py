# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the modules that act on the tenant clusters log in to them."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  cluster_passwords:
    description:
      - The password of each cluster's O(selfbase.platform.tenant_cluster#module:admin_user), by cluster name.
        A cluster not listed uses libpq's own (a C(.pgpass) file, or peer or certificate authentication). Never
        logged.
    type: dict
    default: {}
'''
