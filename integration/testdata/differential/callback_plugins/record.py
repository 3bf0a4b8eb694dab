# Writes every task result as one JSON line to $GOMUX_DIFF_RESULTS, so
# TestDifferential compares what Ansible observed, task by task, between a
# direct run and a run through gomux. It only records: it changes nothing
# in how tasks run or connect.
from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = '''
name: record
type: aggregate
short_description: write each task result as a JSON line
description: Writes each task result as a JSON line to the file named by GOMUX_DIFF_RESULTS.
requirements:
  - enable in configuration
'''


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'aggregate'
    CALLBACK_NAME = 'record'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._out = open(os.environ['GOMUX_DIFF_RESULTS'], 'w', encoding='utf-8')
        self._started = time.monotonic()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._started = time.monotonic()

    def _record(self, status, result):
        line = {
            'task': result._task.get_name(),
            'host': result._host.get_name(),
            'status': status,
            'result': result._result,
            'seconds': round(time.monotonic() - self._started, 3),
        }
        self._out.write(json.dumps(line, sort_keys=True, default=repr) + '\n')
        self._out.flush()

    def v2_runner_on_ok(self, result):
        self._record('ok', result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record('failed_ignored' if ignore_errors else 'failed', result)

    def v2_runner_on_skipped(self, result):
        self._record('skipped', result)

    def v2_runner_on_unreachable(self, result):
        self._record('unreachable', result)
