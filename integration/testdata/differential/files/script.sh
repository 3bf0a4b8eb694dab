#!/bin/sh
# Run by the script module in extra.yml: prints its arguments, where it
# runs and a line on stderr, and exits with the status it is asked for.
echo "args: $#"
for a in "$@"; do echo "arg: [$a]"; done
echo "pwd: $(pwd)"
echo "to stderr" >&2
case "$1" in
fail) exit 3 ;;
esac
