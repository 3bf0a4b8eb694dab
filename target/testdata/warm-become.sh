# shellcheck shell=sh
# warm-become: a module run under become (see WarmRun). The become user
# runs its own copy of the agent, in its own cache, that it made itself
# and hashed, or the interpreter exactly as Ansible asked.
_gomux_agent="$HOME/.cache/gomux/agent-"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef;
if case "$HOME" in
	/?*) { { [ -O "$HOME" ] && [ -d "$HOME/.cache" ] && [ ! -L "$HOME/.cache" ] && [ -O "$HOME/.cache" ] && [ -f "$_gomux_agent" ] && [ ! -L "$_gomux_agent" ] && [ -O "$_gomux_agent" ] && [ -d "$HOME/.cache/gomux" ] && [ ! -L "$HOME/.cache/gomux" ] && [ -O "$HOME/.cache/gomux" ]; } || { (
		# The install: PATH first, for the become method may have kept
		# the login user's; the module run keeps the PATH it was given.
		PATH=/usr/sbin:/usr/bin:/sbin:/bin; umask 077; d="$HOME/.cache/gomux"; t="$d/.agent-"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.$$;
		[ -O "$HOME" ] && mkdir -p "$d" && [ ! -L "$d" ] && [ -O "$d" ] && chmod 700 "$d" &&
		[ -f /home/u/.cache/gomux/agent-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef ] && head -c 67108864 /home/u/.cache/gomux/agent-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef > "$t" &&
		[ "$(sha256sum < "$t" | cut -c1-64)" = 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef ] && chmod 500 "$t" && mv -f "$t" "$_gomux_agent" ||
		{ rm -f "$t"; exit 1; }
	) >/dev/null 2>&1 && [ -O "$HOME" ] && [ -d "$HOME/.cache" ] && [ ! -L "$HOME/.cache" ] && [ -O "$HOME/.cache" ] && [ -f "$_gomux_agent" ] && [ ! -L "$_gomux_agent" ] && [ -O "$_gomux_agent" ] && [ -d "$HOME/.cache/gomux" ] && [ ! -L "$HOME/.cache/gomux" ] && [ -O "$HOME/.cache/gomux" ]; }; } && [ -x "$_gomux_agent" ] ;;
	*) false ;;
esac; then
	LANG=C "$_gomux_agent" pyrun -agent 77:9000 -idle 5m0s -- /usr/bin/python3 /home/u/.ansible/tmp/ansible-tmp-1700000000.1-42-1234/AnsiballZ_ping.py;
else
	LANG=C /usr/bin/python3 /home/u/.ansible/tmp/ansible-tmp-1700000000.1-42-1234/AnsiballZ_ping.py;
fi

