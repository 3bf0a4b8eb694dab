# shellcheck shell=sh
# cachecheck: not a program of its own, but the check the launcher and the
# upload make first. It sets bad to why the agent cache (its path in d)
# cannot be trusted: a file there runs as the login user, so no one else
# may be able to write it or rename it. As OpenSSH's StrictModes does for
# authorized_keys, $HOME and ~/.cache must be owned by the user (or root)
# and not writable by group or others; then the cache must be a directory
# (not a symlink) owned by the user and not writable by group or others.
# top is set when the fault is above the cache (gomux cannot fix it and
# does without the agent); otherwise the upload replaces the directory.
{{define "cachecheck" -}}
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
{{- end}}
