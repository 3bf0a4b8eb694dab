# shellcheck shell=sh
# warm: a module run without become (see WarmRun): the login user runs its
# own agent's pyrun, or the interpreter as Ansible asked.
if [ -x /home/u/.cache/gomux/agent-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef ]; then
	LANG=C /home/u/.cache/gomux/agent-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef pyrun -agent 77:9000 -idle 5m0s -- /usr/bin/python3 /home/u/.ansible/tmp/ansible-tmp-1700000000.1-42-1234/AnsiballZ_ping.py;
else
	LANG=C /usr/bin/python3 /home/u/.ansible/tmp/ansible-tmp-1700000000.1-42-1234/AnsiballZ_ping.py;
fi

