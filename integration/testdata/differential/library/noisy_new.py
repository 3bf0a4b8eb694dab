#!/usr/bin/python3
# A new-style module (AnsiballZ, pipelined when pipelining is on) that
# writes to stderr and, on request, dies with a traceback after output.
from __future__ import annotations

import sys

from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec=dict(say=dict(type='str', default=''), crash=dict(type='bool', default=False)))
    sys.stderr.write('noisy_new: to stderr\n')
    sys.stderr.flush()
    if module.params['crash']:
        sys.stdout.write('noisy_new: partial output\n')
        sys.stdout.flush()
        raise RuntimeError('noisy_new crashed on purpose')
    module.exit_json(changed=True, said=module.params['say'])


if __name__ == '__main__':
    main()
