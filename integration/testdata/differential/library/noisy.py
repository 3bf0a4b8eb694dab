#!/usr/bin/python3
# A module that writes to stderr around its JSON, and on request fails
# without any JSON at all, so the test sees how module stdout and stderr
# reach Ansible (merged by a pty when not pipelined, apart when pipelined).
# An old-style module: Ansible hands it a JSON args file.
# WANT_JSON
import json
import sys


def main():
    args = {}
    if len(sys.argv) > 1:
        with open(sys.argv[1]) as f:
            args = json.load(f)
    sys.stderr.write('noisy: to stderr before the result\n')
    sys.stderr.flush()
    if args.get('crash'):
        sys.stdout.write('noisy: not json\n')
        sys.stdout.flush()
        sys.stderr.write('noisy: crashing with status 3\n')
        sys.exit(3)
    print(json.dumps({'changed': False, 'msg': 'noisy ok', 'said': args.get('say', '')}))


if __name__ == '__main__':
    main()
