# shellcheck shell=sh
# launcher: starts the cached agent if its hash verifies (see Launcher).
# The PATH it was given is the agent's (and so its commands'), as sshd
# would give it; the launcher's own tools run with the fixed one.
path0=${PATH-}; pathset=${PATH+1}; PATH=/usr/sbin:/usr/bin:/sbin:/bin;
m=$(uname -m);
case "$m" in
	x86_64|amd64) h=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef ;;
	aarch64|arm64) h=fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210 ;;
	*) echo "GOMUX-NO-AGENT no agent build for machine $m"; exit 0 ;;
esac;
d="$HOME/.cache/gomux"; f="$d/agent-$h";
u=$(id -u); bad=; top=;
for p in "$HOME" "$HOME/.cache"; do
	[ -e "$p" ] || continue;
	s=$(stat -Lc '%u %a' "$p") || { bad="cannot stat $p"; top=1; break; };
	case "$s" in "$u "*|"0 "*) ;; *) bad="$p is not owned by uid $u ($s)"; top=1; break ;; esac;
	case "$s" in *[2367]?|*[2367]) bad="$p is writable by others (mode ${s#* })"; top=1; break ;; esac;
done;
if [ -z "$bad" ] && { [ -e "$d" ] || [ -L "$d" ]; }; then
	if [ -L "$d" ] || [ ! -d "$d" ] || [ ! -O "$d" ]; then bad="$d is not a directory owned by uid $u";
	else s=$(stat -c '%a' "$d"); case "$s" in *[2367]?|*[2367]) bad="$d is writable by others (mode $s)" ;; esac; fi;
fi;
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
			exec "$f" serve -cache-days 30;
		fi;
		exec 3<&-;
	else break; fi;
done;
echo "GOMUX-NEED-AGENT $h $m"

