# shellcheck shell=sh
# warm-become: a module run under become (see WarmRun). The become user
# runs its own copy of the agent, in its own cache, that it made itself
# and hashed, or the interpreter exactly as Ansible asked.
{{define "owned" -}}
[ -O "$HOME" ] && [ -d "$HOME/.cache" ] && [ ! -L "$HOME/.cache" ] && [ -O "$HOME/.cache" ] && [ -f "$_gomux_agent" ] && [ ! -L "$_gomux_agent" ] && [ -O "$_gomux_agent" ] && [ -d "$HOME/.cache/gomux" ] && [ ! -L "$HOME/.cache/gomux" ] && [ -O "$HOME/.cache/gomux" ]
{{- end -}}
_gomux_agent="$HOME/.cache/gomux/agent-"{{q .SHA}};
if case "$HOME" in
	/?*) { { {{template "owned"}}; } || { (
		# The install: PATH first, for the become method may have kept
		# the login user's; the module run keeps the PATH it was given.
		PATH=/usr/sbin:/usr/bin:/sbin:/bin; umask 077; d="$HOME/.cache/gomux"; t="$d/.agent-"{{q .SHA}}.$$;
		[ -O "$HOME" ] && mkdir -p "$d" && [ ! -L "$d" ] && [ -O "$d" ] && chmod 700 "$d" &&
		[ -f {{q .Agent}} ] && head -c 67108864 {{q .Agent}} > "$t" &&
		[ "$(sha256sum < "$t" | cut -c1-64)" = {{q .SHA}} ] && chmod 500 "$t" && mv -f "$t" "$_gomux_agent" ||
		{ rm -f "$t"; exit 1; }
	) >/dev/null 2>&1 && {{template "owned"}}; }; } && [ -x "$_gomux_agent" ] ;;
	*) false ;;
esac; then
	{{code .Env}}"$_gomux_agent" pyrun {{range .Flags}}{{q .}} {{end}}-- {{code .Run}};
else
	{{code .Env}}{{code .Run}};
fi
