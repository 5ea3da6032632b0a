# -*- coding: utf-8 -*-
# Copyright: selfbase.platform contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one base class of input errors of the selfbase.platform modules."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class InputError(ValueError):
    """Invalid input, found before the first write; the message starts with the field it names."""
