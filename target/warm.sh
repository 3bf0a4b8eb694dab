# shellcheck shell=sh
# warm: a module run without become (see WarmRun): the login user runs its
# own agent's pyrun, or the interpreter as Ansible asked.
if [ -x {{q .Agent}} ]; then
	{{code .Env}}{{q .Agent}} pyrun {{range .Flags}}{{q .}} {{end}}-- {{code .Run}};
else
	{{code .Env}}{{code .Run}};
fi
