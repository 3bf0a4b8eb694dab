# shellcheck shell=sh
# upload: writes the agent from stdin into the cache (see Upload).
PATH=/usr/sbin:/usr/bin:/sbin:/bin; umask 077; d="$HOME/.cache/gomux";
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
if [ -n "$top" ]; then echo "$bad" >&2; exit 1; fi;
if [ -n "$bad" ]; then rm -rf "$d" || exit 1; fi;
h=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef; t="$d/.agent-$h.$$"; f="$d/agent-$h";
mkdir -p "$d" && [ ! -L "$d" ] && [ -O "$d" ] && cat > "$t" && [ "$(sha256sum < "$t" | cut -c1-64)" = "$h" ] && chmod 700 "$t" &&
# A shared home (NFS) or a second gomux may have put a good copy there
# meanwhile: keep it, so a launcher hashing it is not raced.
{ { [ -f "$f" ] && [ ! -L "$f" ] && [ "$(sha256sum < "$f" | cut -c1-64)" = "$h" ] && rm -f "$t"; } || mv -f "$t" "$f"; } && echo GOMUX-UPLOADED && exit 0;
rm -f "$t"; exit 1

