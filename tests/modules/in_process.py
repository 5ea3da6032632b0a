"""Run one of the collection's modules in the test process, as Ansible's own unit tests do: its main() with the
arguments and internal flags (check mode, diff) a controller would send, and the result it prints, read back the
way the controller reads it. A module call through ansible-playbook costs about 0.75 CPU-s (the playbook machinery,
then a new interpreter importing psycopg or stripe); here it costs what the module itself does.

What this skips is the controller: action plugins, task keywords and the packaging of the module (AnsiballZ).
test_through_ansible_playbook.py runs one call of every module both ways and compares the results."""

from __future__ import annotations

import importlib
import json
import tempfile
import traceback
from unittest import mock

from ansible.module_utils import basic
from ansible.module_utils.common import json as ansible_json
from ansible.module_utils.common import warnings as ansible_warnings
from ansible.module_utils.testing import patch_module_args

# modules with an action plugin run through ansible-playbook: the plugin is part of what they do
WITH_ACTION_PLUGIN = frozenset({"tenants"})


def run_module(module, args, check=False, diff=False):
    """The result of ``selfbase.platform.<module>`` called with ``args``, as a registered task would hold it."""
    code = importlib.import_module(f"ansible_collections.selfbase.platform.plugins.modules.{module}")
    printed = []
    encoder = ansible_json.get_module_encoder("legacy", ansible_json.Direction.MODULE_TO_CONTROLLER)

    def record(_self, result):
        printed.append(json.loads(json.dumps(result, cls=encoder)))

    with tempfile.TemporaryDirectory() as tmp:
        internal = {"_ansible_check_mode": check, "_ansible_diff": diff, "_ansible_inject_invocation": True,
                    "_ansible_module_name": f"selfbase.platform.{module}", "_ansible_tmpdir": tmp,
                    "_ansible_remote_tmp": tmp}
        ansible_warnings._global_warnings.clear()  # pylint: disable=protected-access
        ansible_warnings._global_deprecations.clear()  # pylint: disable=protected-access
        try:
            with patch_module_args(dict(args, **internal)), \
                    mock.patch.object(basic.AnsibleModule, "_record_module_result", record):
                code.main()
        except SystemExit:
            pass
        except Exception:  # pylint: disable=broad-except
            # what the controller reports for a module that raised
            return {"failed": True, "msg": "MODULE FAILURE", "exception": traceback.format_exc(), "changed": False}
        warnings = list(ansible_warnings.get_warning_messages())
        ansible_warnings._global_warnings.clear()  # pylint: disable=protected-access
    if len(printed) != 1:
        return {"failed": True, "msg": f"MODULE FAILURE: printed {len(printed)} results", "changed": False}
    result = printed[0]
    # the controller's view: warnings as their messages, changed always present
    result.pop("deprecations", None)
    if warnings:
        result["warnings"] = warnings
    else:
        result.pop("warnings", None)
    result.setdefault("changed", False)
    return result
