# shellcheck shell=sh
# launcher: starts the cached agent if its hash verifies (see Launcher).
# The PATH it was given is the agent's (and so its commands'), as sshd
# would give it; the launcher's own tools run with the fixed one.
path0=${PATH-}; pathset=${PATH+1}; PATH=/usr/sbin:/usr/bin:/sbin:/bin;
m=$(uname -m);
case "$m" in
	{{- range .Arches}}
	{{range $i, $n := .Machines}}{{if $i}}|{{end}}{{q $n}}{{end}}) h={{q .SHA}} ;;
	{{- end}}
	*) echo "GOMUX-NO-AGENT no agent build for machine $m"; exit 0 ;;
esac;
d="$HOME/.cache/gomux"; f="$d/agent-$h";
{{template "cachecheck" .}}
if [ -n "$top" ]; then echo "GOMUX-NO-AGENT unsafe agent cache: $bad"; exit 0; fi;
if [ -n "$bad" ]; then echo "GOMUX-NEED-AGENT $h $m unsafe agent cache: $bad"; exit 0; fi;
# Open the file once, hash what was opened, check the path still names
# that very file, and run it by its path; three tries, for a concurrent
# upload renaming a new copy over it. (i only counts the tries; -ef is not
# POSIX, but dash, bash and busybox ash, the /bin/sh of the targets, all
# have it, and it is the check that the path names the file hashed.)
# shellcheck disable=SC2034,SC3013
for i in 1 2 3; do
	if [ -f "$f" ] && [ ! -L "$f" ] && [ -O "$f" ] && exec 3<"$f"; then
		if [ "$(sha256sum <&3 2>/dev/null | cut -c1-64)" = "$h" ] && [ "$f" -ef /proc/self/fd/3 ]; then
			if [ -n "$pathset" ]; then PATH=$path0; else unset PATH; fi;
			exec "$f" serve -cache-days {{q .CacheDays}};
		fi;
		exec 3<&-;
	else break; fi;
done;
echo "GOMUX-NEED-AGENT $h $m"
