# shellcheck shell=sh
# cachemount: prints the mount options of the file system the agent cache
# is (or would be) on (see CacheMountOptions).
PATH=/usr/sbin:/usr/bin:/sbin:/bin;
findmnt -no OPTIONS -T "$HOME/.cache" 2>/dev/null || findmnt -no OPTIONS -T "$HOME"

