"""Test harness only: the controller's garbage collector leaves what exists at a task's start alone.

Each task forks a worker per host from the controller; Python's collector in the parent and in every child then
walks all of Ansible's long-lived objects again (and in a child, writing to them copies their pages). Measured on a
warm run of site.yml on the production scenario's ten hosts: a tenth of the controller's CPU time."""

from __future__ import annotations

import gc

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: gc_freeze
type: aggregate
short_description: Freeze the controller's objects at each task's start (tests only)
description:
  - At each task's start, collect what is garbage, then move the surviving objects out of the collector's reach.
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "gc_freeze"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_task_start(self, task, is_conditional):
        gc.collect()
        gc.freeze()

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)
